//! SCSI commands as bytes: CDB parse/build for the block command families, PROTECT fields, status codes and sense data in fixed and descriptor formats.
//!
//! Used by the target's device server (parse CDBs, build sense) and by the initiator
//! (build CDBs, parse and print sense). No I/O.

#![forbid(unsafe_code)]

pub mod asc;
pub mod cdb;
pub mod opcode;
pub mod sense;
pub mod status;

pub use cdb::{
    CacheRange, Cdb, CdbError, CompareAndWrite, ExpectedTags, Form, ModeSelect, ModeSense,
    PersistentReserveOut, ReadWrite, ReportSupportedOpcodes, Reservation, RwKind, StartStopUnit,
    WriteSame,
};
pub use sense::{FieldPointer, Sense, SenseError, SenseFormat, SenseKey};
pub use status::Status;
