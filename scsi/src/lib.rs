//! SCSI commands as bytes: CDB parse/build for the block command families, PROTECT fields, status codes and sense data in fixed and descriptor formats.
