//! Binary record payloads for the journal's own files: little-endian
//! integers and length-prefixed byte strings. A record that passed its
//! checksum but does not decode is refused by name, never unwrapped.

/// Builds a record payload.
#[derive(Default)]
pub struct Enc(pub Vec<u8>);

impl Enc {
    pub fn new(kind: u8) -> Enc {
        Enc(vec![kind])
    }

    pub fn u8(mut self, v: u8) -> Enc {
        self.0.push(v);
        self
    }

    pub fn u32(mut self, v: u32) -> Enc {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn u64(mut self, v: u64) -> Enc {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A byte string with a u32 length in front.
    pub fn bytes(mut self, v: &[u8]) -> Enc {
        self.0.extend_from_slice(&(v.len() as u32).to_le_bytes());
        self.0.extend_from_slice(v);
        self
    }

    /// The rest of the record, without a length.
    pub fn tail(mut self, v: &[u8]) -> Enc {
        self.0.extend_from_slice(v);
        self
    }

    pub fn done(self) -> Vec<u8> {
        self.0
    }
}

/// Reads a record payload; every getter says `None` past the end.
pub struct Dec<'a>(pub &'a [u8]);

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    pub fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    pub fn u32(&mut self) -> Option<u32> {
        let mut w = [0u8; 4];
        w.copy_from_slice(self.take(4)?);
        Some(u32::from_le_bytes(w))
    }

    pub fn u64(&mut self) -> Option<u64> {
        let mut w = [0u8; 8];
        w.copy_from_slice(self.take(8)?);
        Some(u64::from_le_bytes(w))
    }

    pub fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    pub fn str(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes()?).ok()
    }

    pub fn tail(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }

    /// `Some(())` when nothing is left (a record of exactly the expected size).
    pub fn end(&self) -> Option<()> {
        self.0.is_empty().then_some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_short_input_is_none() {
        let rec = Enc::new(7)
            .u32(5)
            .u64(u64::MAX)
            .bytes(b"abc")
            .tail(b"rest")
            .done();
        let mut d = Dec(&rec);
        assert_eq!(d.u8(), Some(7));
        assert_eq!(d.u32(), Some(5));
        assert_eq!(d.u64(), Some(u64::MAX));
        assert_eq!(d.bytes(), Some(&b"abc"[..]));
        assert_eq!(d.tail(), b"rest");
        assert_eq!(d.end(), Some(()));
        assert_eq!(Dec(&rec[..3]).u64(), None);
        assert_eq!(Dec(&[9, 0, 0, 0, 1]).bytes(), None);
    }
}
