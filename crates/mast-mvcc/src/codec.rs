//! Small helpers for the binary encodings of this crate and of the log in front of it:
//! little-endian integers and length-prefixed byte strings, read through a [`Reader`] that
//! checks every length and never panics on bad input.

use crate::command::CodecError;

/// Appends `b` as a `u32 LE` length and the bytes.
pub fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    buf.extend_from_slice(&(b.len() as u32).to_le_bytes());
    buf.extend_from_slice(b);
}

/// Appends a `u64 LE`.
pub fn put_u64(buf: &mut Vec<u8>, v: u64) {
    buf.extend_from_slice(&v.to_le_bytes());
}

/// Appends a `u32 LE`.
pub fn put_u32(buf: &mut Vec<u8>, v: u32) {
    buf.extend_from_slice(&v.to_le_bytes());
}

/// A cursor over encoded bytes; every read checks the length first.
pub struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    /// The next `n` bytes.
    ///
    /// # Errors
    /// [`CodecError::Truncated`] when fewer are left.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.0.len() < n {
            return Err(CodecError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    /// One byte.
    ///
    /// # Errors
    /// [`CodecError::Truncated`].
    pub fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }

    /// A byte that must be 0 or 1.
    ///
    /// # Errors
    /// [`CodecError::Truncated`], or a bad byte.
    pub fn bool(&mut self) -> Result<bool, CodecError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(CodecError::Protobuf(
                "boolean byte is neither 0 nor 1".into(),
            )),
        }
    }

    /// A `u32 LE`.
    ///
    /// # Errors
    /// [`CodecError::Truncated`].
    pub fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("took 4 bytes"),
        ))
    }

    /// A `u64 LE`.
    ///
    /// # Errors
    /// [`CodecError::Truncated`].
    pub fn u64(&mut self) -> Result<u64, CodecError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("took 8 bytes"),
        ))
    }

    /// An `i64 LE`.
    ///
    /// # Errors
    /// [`CodecError::Truncated`].
    pub fn i64(&mut self) -> Result<i64, CodecError> {
        Ok(i64::from_le_bytes(
            self.take(8)?.try_into().expect("took 8 bytes"),
        ))
    }

    /// A `u32 LE` length and that many bytes.
    ///
    /// # Errors
    /// [`CodecError::Truncated`].
    pub fn bytes(&mut self) -> Result<&'a [u8], CodecError> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    /// A byte string that must be UTF-8.
    ///
    /// # Errors
    /// [`CodecError::Truncated`] or [`CodecError::NotUtf8`].
    pub fn string(&mut self) -> Result<String, CodecError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| CodecError::NotUtf8)
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }

    /// Checks that nothing is left.
    ///
    /// # Errors
    /// [`CodecError::Trailing`] when bytes are left.
    pub fn finish(&self) -> Result<(), CodecError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(CodecError::Trailing)
        }
    }
}
