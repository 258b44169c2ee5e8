//! How a command reaches the device server, whatever carries it: the LUN field's
//! addressing, and the answers for a LUN the target does not have (SPC-4 and SAM-5
//! rules, no PDUs).

use scsi::{Sense, SenseFormat, SenseKey};

use crate::service::{Completion, Nexus, ScsiService};

/// Decode the 8-byte LUN field (SAM peripheral or flat addressing, single level) to a
/// LUN number; `None` for any other form.
pub fn lun_number(raw: u64) -> Option<u64> {
    let b0 = (raw >> 56) as u8;
    let b1 = (raw >> 48) as u8;
    if raw & 0x0000_ffff_ffff_ffff != 0 {
        return None;
    }
    match b0 >> 6 {
        0 if b0 & 0x3f == 0 => Some(u64::from(b1)),
        1 => Some(u64::from(b0 & 0x3f) << 8 | u64::from(b1)),
        _ => None,
    }
}

/// Encode a LUN number as the 8-byte LUN field (peripheral below 256, flat above).
pub fn lun_field(lun: u64) -> u64 {
    if lun < 256 {
        lun << 48
    } else {
        (0x4000 | (lun & 0x3fff)) << 48
    }
}

/// The sense bytes for ILLEGAL REQUEST with `asc`.
pub fn illegal_request(asc: (u8, u8)) -> Vec<u8> {
    Sense::new(SenseKey::ILLEGAL_REQUEST, asc).to_bytes(SenseFormat::Fixed)
}

/// Answer a command addressed to a LUN the target does not have: INQUIRY reports
/// peripheral qualifier 3, REQUEST SENSE returns LOGICAL UNIT NOT SUPPORTED as data,
/// REPORT LUNS is answered by the target's first LUN, anything else gets CHECK
/// CONDITION, ILLEGAL REQUEST, LOGICAL UNIT NOT SUPPORTED (25h/00h).
pub fn absent_lun(
    service: &dyn ScsiService,
    nexus: &Nexus,
    cdb: &[u8],
    data_out: &[u8],
) -> Completion {
    const LUN_NOT_SUPPORTED: (u8, u8) = (0x25, 0x00);
    match cdb.first() {
        Some(0x12) if cdb.len() >= 6 => {
            let evpd = cdb[1] & 1 != 0;
            let alloc = u16::from_be_bytes([cdb[3], cdb[4]]);
            if !evpd && cdb[2] != 0 {
                let sense = Sense::invalid_field_in_cdb(2, None).to_bytes(SenseFormat::Fixed);
                return Completion::check_condition(sense);
            }
            if evpd {
                // Vital product data of a logical unit that is not there: the page
                // header with peripheral qualifier 3 (and an empty page list for 00h).
                let mut page = vec![0x7f, cdb[2], 0, 0];
                if cdb[2] == 0 {
                    page[3] = 1;
                    page.push(0);
                }
                page.truncate(alloc.into());
                return Completion::good(page);
            }
            Completion::good(crate::device::inquiry_no_lun(alloc))
        }
        Some(0x03) if cdb.len() >= 6 => {
            let mut d = illegal_request(LUN_NOT_SUPPORTED);
            d.truncate(cdb[4].into());
            Completion::good(d)
        }
        Some(0xa0) => match service.luns().first() {
            Some(first) => service.execute(nexus, first.lun, cdb, data_out),
            None => Completion::check_condition(illegal_request(LUN_NOT_SUPPORTED)),
        },
        _ => Completion::check_condition(illegal_request(LUN_NOT_SUPPORTED)),
    }
}

/// Runs `cdb` on `lun` when it exists (`Some`), or answers it as
/// [`absent_lun`] does.
pub fn execute_on(
    service: &dyn ScsiService,
    nexus: &Nexus,
    lun: Option<u64>,
    cdb: &[u8],
    data_out: &[u8],
) -> Completion {
    match lun {
        Some(l) => service.execute(nexus, l, cdb, data_out),
        None => absent_lun(service, nexus, cdb, data_out),
    }
}

/// [`execute_on`] with the Data-In written into `data_in` (see
/// [`ScsiService::execute_into`]); returns the Data-In length produced.
pub fn execute_into_on(
    service: &dyn ScsiService,
    nexus: &Nexus,
    lun: Option<u64>,
    cdb: &[u8],
    data_out: &[u8],
    data_in: &mut [u8],
) -> (Completion, usize) {
    match lun {
        Some(l) => service.execute_into(nexus, l, cdb, data_out, data_in),
        None => absent_lun(service, nexus, cdb, data_out).place(data_in),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lun_field_round_trip() {
        for lun in [0u64, 1, 255, 256, 16383] {
            assert_eq!(lun_number(lun_field(lun)), Some(lun));
        }
        assert_eq!(lun_field(1), 0x0001_0000_0000_0000);
        assert_eq!(lun_number(0x0001_0000_0000_0001), None);
        assert_eq!(lun_number(0x8000_0000_0000_0000), None);
    }
}
