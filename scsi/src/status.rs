//! SCSI status codes (SAM-5) as returned in the SCSI Response.

use std::fmt;

/// A SAM status byte. Unknown values are kept as they came.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status(pub u8);

impl Status {
    /// The command completed without error.
    pub const GOOD: Status = Status(0x00);
    /// Sense data describes an error or exception.
    pub const CHECK_CONDITION: Status = Status(0x02);
    /// PRE-FETCH: the requested blocks fit in the cache.
    pub const CONDITION_MET: Status = Status(0x04);
    /// The logical unit is busy; retry later.
    pub const BUSY: Status = Status(0x08);
    /// Obsolete (SAM-2 linked commands).
    pub const INTERMEDIATE: Status = Status(0x10);
    /// Obsolete (SAM-2 linked commands).
    pub const INTERMEDIATE_CONDITION_MET: Status = Status(0x14);
    /// A reservation held by another I_T nexus forbids the command.
    pub const RESERVATION_CONFLICT: Status = Status(0x18);
    /// Obsolete.
    pub const COMMAND_TERMINATED: Status = Status(0x22);
    /// The task set is full.
    pub const TASK_SET_FULL: Status = Status(0x28);
    /// An ACA condition exists.
    pub const ACA_ACTIVE: Status = Status(0x30);
    /// The command was aborted by another I_T nexus.
    pub const TASK_ABORTED: Status = Status(0x40);

    /// The status name in SAM's words, or `None` for an unassigned value.
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0x00 => "GOOD",
            0x02 => "CHECK CONDITION",
            0x04 => "CONDITION MET",
            0x08 => "BUSY",
            0x10 => "INTERMEDIATE",
            0x14 => "INTERMEDIATE-CONDITION MET",
            0x18 => "RESERVATION CONFLICT",
            0x22 => "COMMAND TERMINATED",
            0x28 => "TASK SET FULL",
            0x30 => "ACA ACTIVE",
            0x40 => "TASK ABORTED",
            _ => return None,
        })
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n}"),
            None => write!(f, "STATUS {:02X}h", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(Status::CHECK_CONDITION.to_string(), "CHECK CONDITION");
        assert_eq!(
            Status::RESERVATION_CONFLICT.to_string(),
            "RESERVATION CONFLICT"
        );
        assert_eq!(Status::TASK_SET_FULL.0, 0x28);
        assert_eq!(Status(0x7E).to_string(), "STATUS 7Eh");
    }
}
