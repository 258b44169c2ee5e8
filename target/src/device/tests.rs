//! Device server tests: command families against RAM and file LUNs.
