//! T10 protection information: CRC-16/T10-DIF and IP-checksum guards, tuple generate/verify, and DIF/DIX layout transforms (INSERT, STRIP, PASS).
