//! Fault injection (off by default): flip one chosen bit of data or PI in one chosen
//! block inside the HCA, after the wire (ICRC) check and before the signature check.
//!
//! Set through [`crate::Mlx5Device::inject_fault`] or, for a daemon, through the
//! environment variable `MLX5_SOFT_FAULT`, read when a device is created. Its syntax
//! is a `;`-separated list of faults, each a `,`-separated list of `key=value`:
//!
//! ```text
//! MLX5_SOFT_FAULT="dir=in,block=2,target=guard:0,once"
//! MLX5_SOFT_FAULT="mkey=0x4201,dir=out,block=0,target=data:17:3;qp=5,block=1,target=reftag:0"
//! ```
//!
//! - `dir=in|out|any`: data arriving at a sig MR (wire view to memory: WRITE
//!   placement, READ response placement, SEND receive) or leaving it (memory to
//!   wire: SEND/WRITE gather, READ responder); default `any`.
//! - `block=N`: block index within the sig MR's view (default 0).
//! - `target=data:BYTE:BIT | guard:BIT | apptag:BIT | reftag:BIT`: the bit to flip;
//!   tag bits count from the field's least significant bit.
//! - `mkey=K` / `qp=N`: limit to one signature mkey or one QP (default: any).
//! - `once` (default) or `always`.

use std::str::FromStr;

/// Which way the data moves through the signature MR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultDirection {
    /// Wire view into memory.
    Inbound,
    /// Memory out to the wire view.
    Outbound,
    /// Both.
    Any,
}

/// The bit to flip.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultTarget {
    /// Bit `bit` of data byte `byte` of the block.
    Data {
        /// Byte within the protection interval.
        byte: u32,
        /// Bit within the byte (0 = LSB).
        bit: u8,
    },
    /// Bit of the guard (0..16).
    Guard {
        /// Bit (0 = LSB).
        bit: u8,
    },
    /// Bit of the application tag (0..16).
    AppTag {
        /// Bit (0 = LSB).
        bit: u8,
    },
    /// Bit of the reference tag (0..32).
    RefTag {
        /// Bit (0 = LSB).
        bit: u8,
    },
}

impl FaultTarget {
    /// For a PI target: (byte offset within the 8-byte tuple, mask).
    pub(crate) fn pi_byte(&self) -> Option<(usize, u8)> {
        let (start, width, bit) = match *self {
            FaultTarget::Data { .. } => return None,
            FaultTarget::Guard { bit } => (0usize, 2usize, bit),
            FaultTarget::AppTag { bit } => (2, 2, bit),
            FaultTarget::RefTag { bit } => (4, 4, bit),
        };
        let bit = usize::from(bit) % (width * 8);
        Some((start + width - 1 - bit / 8, 1 << (bit % 8)))
    }
}

/// Which objects a fault applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultScope {
    /// Any signature MR on any QP.
    Any,
    /// One signature mkey.
    Mkey(u32),
    /// Any signature MR used by one QP.
    Qp(u32),
}

/// One fault to inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FaultSpec {
    /// Where.
    pub scope: FaultScope,
    /// Which direction.
    pub direction: FaultDirection,
    /// Block index within the signature MR.
    pub block: u64,
    /// Bit to flip.
    pub target: FaultTarget,
    /// Remove the fault after it fired once.
    pub once: bool,
}

/// A bad `MLX5_SOFT_FAULT` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad fault spec {spec:?}: {reason}")]
pub struct FaultParseError {
    /// The offending item.
    pub spec: String,
    /// Why.
    pub reason: String,
}

fn num(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

impl FromStr for FaultSpec {
    type Err = FaultParseError;

    fn from_str(s: &str) -> Result<FaultSpec, FaultParseError> {
        let bad = |reason: &str| FaultParseError {
            spec: s.to_string(),
            reason: reason.to_string(),
        };
        let mut f = FaultSpec {
            scope: FaultScope::Any,
            direction: FaultDirection::Any,
            block: 0,
            target: FaultTarget::Guard { bit: 0 },
            once: true,
        };
        let mut have_target = false;
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (k, v) = item.split_once('=').unwrap_or((item, ""));
            match k {
                "once" => f.once = true,
                "always" => f.once = false,
                "dir" => {
                    f.direction = match v {
                        "in" => FaultDirection::Inbound,
                        "out" => FaultDirection::Outbound,
                        "any" => FaultDirection::Any,
                        _ => return Err(bad("dir must be in, out or any")),
                    }
                }
                "block" => f.block = num(v).ok_or_else(|| bad("block must be a number"))?,
                "mkey" => {
                    f.scope = FaultScope::Mkey(
                        num(v)
                            .and_then(|n| u32::try_from(n).ok())
                            .ok_or_else(|| bad("bad mkey"))?,
                    )
                }
                "qp" => {
                    f.scope = FaultScope::Qp(
                        num(v)
                            .and_then(|n| u32::try_from(n).ok())
                            .ok_or_else(|| bad("bad qp"))?,
                    )
                }
                "target" => {
                    let parts: Vec<&str> = v.split(':').collect();
                    let n =
                        |i: usize, max: u64| parts.get(i).and_then(|p| num(p)).filter(|&x| x < max);
                    f.target = match parts[0] {
                        "data" => FaultTarget::Data {
                            byte: n(1, 4096).ok_or_else(|| bad("data:BYTE:BIT, BYTE < 4096"))?
                                as u32,
                            bit: n(2, 8).ok_or_else(|| bad("data:BYTE:BIT, BIT < 8"))? as u8,
                        },
                        "guard" => FaultTarget::Guard {
                            bit: n(1, 16).unwrap_or(0) as u8,
                        },
                        "apptag" => FaultTarget::AppTag {
                            bit: n(1, 16).unwrap_or(0) as u8,
                        },
                        "reftag" => FaultTarget::RefTag {
                            bit: n(1, 32).unwrap_or(0) as u8,
                        },
                        _ => return Err(bad("target must be data, guard, apptag or reftag")),
                    };
                    have_target = true;
                }
                _ => return Err(bad("unknown key")),
            }
        }
        if !have_target {
            return Err(bad("target= is required"));
        }
        Ok(f)
    }
}

/// Parses a whole `MLX5_SOFT_FAULT` value.
pub fn parse_list(s: &str) -> Result<Vec<FaultSpec>, FaultParseError> {
    s.split(';')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::parse)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_env_syntax() {
        let v = parse_list(
            "dir=in,block=2,target=guard:0,once; mkey=0x4201,dir=out,target=data:17:3,always",
        )
        .unwrap();
        assert_eq!(
            v[0],
            FaultSpec {
                scope: FaultScope::Any,
                direction: FaultDirection::Inbound,
                block: 2,
                target: FaultTarget::Guard { bit: 0 },
                once: true
            }
        );
        assert_eq!(v[1].scope, FaultScope::Mkey(0x4201));
        assert_eq!(v[1].target, FaultTarget::Data { byte: 17, bit: 3 });
        assert!(!v[1].once);
        for bad in [
            "block=1",
            "target=crc",
            "dir=up,target=guard",
            "target=data:5000:1",
            "x=1,target=guard",
        ] {
            assert!(parse_list(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pi_bytes() {
        assert_eq!(FaultTarget::Guard { bit: 0 }.pi_byte(), Some((1, 1)));
        assert_eq!(FaultTarget::Guard { bit: 15 }.pi_byte(), Some((0, 0x80)));
        assert_eq!(FaultTarget::AppTag { bit: 9 }.pi_byte(), Some((2, 2)));
        assert_eq!(FaultTarget::RefTag { bit: 0 }.pi_byte(), Some((7, 1)));
        assert_eq!(FaultTarget::RefTag { bit: 31 }.pi_byte(), Some((4, 0x80)));
    }
}
