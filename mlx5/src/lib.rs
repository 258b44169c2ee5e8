//! The mlx5 provider: a software model of a ConnectX HCA (WQE/CQE rings, mkeys, UMR/BSF/PSV, signature engine) whose queue pairs run over sockets.
