//! An NBD server for one LUN (the NBD protocol's fixed newstyle handshake):
//! NBD_OPT_EXPORT_NAME, NBD_OPT_INFO, NBD_OPT_GO, NBD_OPT_LIST and NBD_OPT_ABORT in
//! option haggling, then READ, WRITE (with FUA), FLUSH, TRIM and DISCONNECT with
//! simple replies. Byte ranges that do not cover whole blocks are read-modify-written.
//! TRIM is advisory in NBD and is acknowledged without touching the LUN.

use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tracing::{debug, info, warn};

use crate::block::SharedLun;

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
const FLAG_NO_ZEROES: u16 = 1 << 1;
const CLIENT_FLAG_NO_ZEROES: u32 = 1 << 1;

const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_LIST: u32 = 3;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;

const REP_ACK: u32 = 1;
const REP_SERVER: u32 = 2;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
const REP_ERR_INVALID: u32 = (1 << 31) + 3;
const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;

const INFO_EXPORT: u16 = 0;
const INFO_BLOCK_SIZE: u16 = 3;

const TFLAG_HAS_FLAGS: u16 = 1 << 0;
const TFLAG_SEND_FLUSH: u16 = 1 << 2;
const TFLAG_SEND_FUA: u16 = 1 << 3;
const TFLAG_SEND_TRIM: u16 = 1 << 5;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_TRIM: u16 = 4;
const CMD_FLAG_FUA: u16 = 1 << 0;

const EIO: u32 = 5;
const EINVAL: u32 = 22;
const ENOSPC: u32 = 28;

/// Largest request payload accepted.
pub const MAX_REQUEST: u32 = 32 << 20;
/// Largest option payload accepted.
const MAX_OPTION: u32 = 4096;

/// Why an NBD connection ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    /// Socket I/O.
    #[error("NBD I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The client broke the protocol.
    #[error("NBD protocol: {0}")]
    Protocol(String),
}

/// Serve `lun` as export `name` on a UNIX socket until the task is dropped.
pub async fn serve_unix(path: &Path, lun: Arc<SharedLun>, name: String) -> Result<(), NbdError> {
    let _ = std::fs::remove_file(path);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let listener = UnixListener::bind(path)?;
    info!(path = %path.display(), export = %name, "NBD export listening");
    loop {
        let (stream, _) = listener.accept().await?;
        let (lun, name) = (lun.clone(), name.clone());
        tokio::spawn(async move {
            if let Err(e) = handle_client(stream, lun, &name).await {
                warn!("NBD client: {e}");
            }
        });
    }
}

/// Serve `lun` as export `name` on a TCP address until the task is dropped.
pub async fn serve_tcp(
    listener: TcpListener,
    lun: Arc<SharedLun>,
    name: String,
) -> Result<(), NbdError> {
    info!(addr = ?listener.local_addr().ok(), export = %name, "NBD export listening");
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let (lun, name) = (lun.clone(), name.clone());
        tokio::spawn(async move {
            if let Err(e) = handle_client(stream, lun, &name).await {
                warn!("NBD client: {e}");
            }
        });
    }
}

async fn option_reply<S: AsyncWrite + Unpin>(
    s: &mut S,
    opt: u32,
    kind: u32,
    data: &[u8],
) -> Result<(), NbdError> {
    let mut b = Vec::with_capacity(20 + data.len());
    b.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&opt.to_be_bytes());
    b.extend_from_slice(&kind.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    s.write_all(&b).await?;
    Ok(())
}

fn transmission_flags() -> u16 {
    TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_SEND_FUA | TFLAG_SEND_TRIM
}

/// The export name and information requests of an NBD_OPT_INFO/GO payload.
fn parse_info_request(data: &[u8]) -> Option<(String, Vec<u16>)> {
    let n = u32::from_be_bytes(data.get(0..4)?.try_into().ok()?) as usize;
    let name = String::from_utf8(data.get(4..4 + n)?.to_vec()).ok()?;
    let count = u16::from_be_bytes(data.get(4 + n..6 + n)?.try_into().ok()?) as usize;
    let reqs = data
        .get(6 + n..6 + n + 2 * count)?
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    Some((name, reqs))
}

/// Run the handshake and transmission phase on one client connection.
pub async fn handle_client<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    lun: Arc<SharedLun>,
    name: &str,
) -> Result<(), NbdError> {
    let size = lun.info().size_bytes();
    let bs = lun.info().block_size;
    let mut hello = Vec::with_capacity(18);
    hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
    hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    s.write_all(&hello).await?;
    let client_flags = s.read_u32().await?;
    let no_zeroes = client_flags & CLIENT_FLAG_NO_ZEROES != 0;
    let known = |n: &str| n.is_empty() || n == name;
    // Option haggling, bounded in rounds.
    let mut entered = false;
    for _ in 0..64 {
        if s.read_u64().await? != IHAVEOPT {
            return Err(NbdError::Protocol("bad option magic".into()));
        }
        let opt = s.read_u32().await?;
        let len = s.read_u32().await?;
        if len > MAX_OPTION {
            return Err(NbdError::Protocol(format!("option {opt} of {len} bytes")));
        }
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data).await?;
        match opt {
            OPT_EXPORT_NAME => {
                let n = String::from_utf8_lossy(&data).into_owned();
                if !known(&n) {
                    return Err(NbdError::Protocol(format!("unknown export {n:?}")));
                }
                let mut b = Vec::with_capacity(134);
                b.extend_from_slice(&size.to_be_bytes());
                b.extend_from_slice(&transmission_flags().to_be_bytes());
                if !no_zeroes {
                    b.extend_from_slice(&[0u8; 124]);
                }
                s.write_all(&b).await?;
                entered = true;
                break;
            }
            OPT_ABORT => {
                option_reply(&mut s, opt, REP_ACK, &[]).await?;
                return Ok(());
            }
            OPT_LIST => {
                let mut d = (name.len() as u32).to_be_bytes().to_vec();
                d.extend_from_slice(name.as_bytes());
                option_reply(&mut s, opt, REP_SERVER, &d).await?;
                option_reply(&mut s, opt, REP_ACK, &[]).await?;
            }
            OPT_INFO | OPT_GO => {
                let Some((n, reqs)) = parse_info_request(&data) else {
                    option_reply(&mut s, opt, REP_ERR_INVALID, &[]).await?;
                    continue;
                };
                if !known(&n) {
                    option_reply(&mut s, opt, REP_ERR_UNKNOWN, &[]).await?;
                    continue;
                }
                let mut export = INFO_EXPORT.to_be_bytes().to_vec();
                export.extend_from_slice(&size.to_be_bytes());
                export.extend_from_slice(&transmission_flags().to_be_bytes());
                option_reply(&mut s, opt, REP_INFO, &export).await?;
                if reqs.contains(&INFO_BLOCK_SIZE) || opt == OPT_GO {
                    let mut b = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                    b.extend_from_slice(&bs.to_be_bytes());
                    b.extend_from_slice(&bs.max(4096).to_be_bytes());
                    b.extend_from_slice(&MAX_REQUEST.to_be_bytes());
                    option_reply(&mut s, opt, REP_INFO, &b).await?;
                }
                option_reply(&mut s, opt, REP_ACK, &[]).await?;
                if opt == OPT_GO {
                    entered = true;
                    break;
                }
            }
            other => option_reply(&mut s, other, REP_ERR_UNSUP, &[]).await?,
        }
    }
    if !entered {
        return Err(NbdError::Protocol("too many options".into()));
    }
    debug!(export = name, size, "NBD transmission phase");
    transmission(&mut s, &lun, size).await
}

async fn reply<S: AsyncWrite + Unpin>(
    s: &mut S,
    error: u32,
    handle: u64,
    data: &[u8],
) -> Result<(), NbdError> {
    let mut b = Vec::with_capacity(16 + data.len());
    b.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&error.to_be_bytes());
    b.extend_from_slice(&handle.to_be_bytes());
    b.extend_from_slice(data);
    s.write_all(&b).await?;
    Ok(())
}

async fn transmission<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    lun: &SharedLun,
    size: u64,
) -> Result<(), NbdError> {
    loop {
        let magic = match s.read_u32().await {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if magic != REQUEST_MAGIC {
            return Err(NbdError::Protocol(format!("bad request magic {magic:#x}")));
        }
        let flags = s.read_u16().await?;
        let ty = s.read_u16().await?;
        let handle = s.read_u64().await?;
        let offset = s.read_u64().await?;
        let len = s.read_u32().await?;
        let in_range = offset
            .checked_add(u64::from(len))
            .is_some_and(|e| e <= size);
        match ty {
            CMD_READ => {
                if len > MAX_REQUEST || !in_range {
                    reply(s, EINVAL, handle, &[]).await?;
                    continue;
                }
                match lun.read_bytes(offset, len).await {
                    Ok(data) => reply(s, 0, handle, &data).await?,
                    Err(e) => {
                        warn!(offset, len, "NBD read failed: {e}");
                        reply(s, EIO, handle, &[]).await?;
                    }
                }
            }
            CMD_WRITE => {
                if len > MAX_REQUEST {
                    return Err(NbdError::Protocol(format!("write of {len} bytes")));
                }
                let mut data = vec![0u8; len as usize];
                s.read_exact(&mut data).await?;
                if !in_range {
                    reply(s, ENOSPC, handle, &[]).await?;
                    continue;
                }
                let mut r = lun.write_bytes(offset, &data).await;
                if r.is_ok() && flags & CMD_FLAG_FUA != 0 {
                    r = lun.flush().await;
                }
                match r {
                    Ok(()) => reply(s, 0, handle, &[]).await?,
                    Err(e) => {
                        warn!(offset, len, "NBD write failed: {e}");
                        reply(s, EIO, handle, &[]).await?;
                    }
                }
            }
            CMD_FLUSH => {
                let err = match lun.flush().await {
                    Ok(()) => 0,
                    Err(e) => {
                        warn!("NBD flush failed: {e}");
                        EIO
                    }
                };
                reply(s, err, handle, &[]).await?;
            }
            CMD_TRIM => reply(s, if in_range { 0 } else { EINVAL }, handle, &[]).await?,
            CMD_DISC => return Ok(()),
            _ => reply(s, EINVAL, handle, &[]).await?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_request_parsing() {
        let mut d = 3u32.to_be_bytes().to_vec();
        d.extend_from_slice(b"lun");
        d.extend_from_slice(&2u16.to_be_bytes());
        d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        d.extend_from_slice(&1u16.to_be_bytes());
        assert_eq!(parse_info_request(&d), Some(("lun".into(), vec![3, 1])));
        assert_eq!(parse_info_request(&d[..8]), None);
        assert_eq!(parse_info_request(&[0, 0, 0, 9]), None);
    }
}
