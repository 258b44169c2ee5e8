//! CRC32C (Castagnoli) HeaderDigest and DataDigest as RFC 7143 defines them.
//!
//! The digest is carried on the wire least significant byte first (RFC 7143 section
//! 13.1 and the test vectors of RFC 3720 appendix B.4): the 32 zero bytes vector
//! produces the wire bytes `aa 36 91 8a`.

/// Which digests are in force on a connection (negotiated HeaderDigest/DataDigest).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Digests {
    /// HeaderDigest=CRC32C: 4 bytes after the BHS and AHS.
    pub header: bool,
    /// DataDigest=CRC32C: 4 bytes after a non-empty, padded data segment.
    pub data: bool,
}

impl Digests {
    /// No digests (login phase, and always over iSER).
    pub const NONE: Digests = Digests {
        header: false,
        data: false,
    };
}

/// CRC32C of `bytes` (carry-less multiplication folding where the CPU has it).
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, bytes) as u32
}

/// Continue a CRC32C over more bytes: `crc32c_append(crc32c(a), b)` is the CRC32C
/// of `a` followed by `b`.
pub fn crc32c_append(crc: u32, bytes: &[u8]) -> u32 {
    // The running register is the finished value before its final inversion.
    let mut d =
        crc_fast::Digest::new_with_init_state(crc_fast::CrcAlgorithm::Crc32Iscsi, u64::from(!crc));
    d.update(bytes);
    d.finalize() as u32
}

/// The four wire bytes of a digest value.
pub fn digest_to_wire(crc: u32) -> [u8; 4] {
    crc.to_le_bytes()
}

/// The digest value carried by four wire bytes.
pub fn digest_from_wire(bytes: [u8; 4]) -> u32 {
    u32::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 3720 appendix B.4 (carried into RFC 7143 by reference): CRC as wire bytes.
    #[test]
    fn rfc_vectors() {
        let zeros = [0u8; 32];
        let ones = [0xffu8; 32];
        let inc: Vec<u8> = (0u8..32).collect();
        let dec: Vec<u8> = (0u8..32).rev().collect();
        assert_eq!(digest_to_wire(crc32c(&zeros)), [0xaa, 0x36, 0x91, 0x8a]);
        assert_eq!(digest_to_wire(crc32c(&ones)), [0x43, 0xab, 0xa8, 0x62]);
        assert_eq!(digest_to_wire(crc32c(&inc)), [0x4e, 0x79, 0xdd, 0x46]);
        assert_eq!(digest_to_wire(crc32c(&dec)), [0x5c, 0xdb, 0x3f, 0x11]);
        // An iSCSI SCSI Read (10) command PDU.
        let read_pdu = [
            0x01, 0xc0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x14,
            0x00, 0x00, 0x00, 0x18, 0x28, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        ];
        assert_eq!(digest_to_wire(crc32c(&read_pdu)), [0x56, 0x3a, 0x96, 0xd9]);
    }

    #[test]
    fn append_matches_one_shot() {
        let inc: Vec<u8> = (0u8..32).collect();
        assert_eq!(crc32c_append(crc32c(&inc[..7]), &inc[7..]), crc32c(&inc));
        assert_eq!(digest_from_wire(digest_to_wire(0x1234_5678)), 0x1234_5678);
    }
}
