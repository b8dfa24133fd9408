//! A reader that hashes (SHA-256) and counts what passes through it, and
//! optionally copies it to a writer: how a bundle is written to disk and
//! digested in the same pass that validates it.

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

/// Hashes, counts and copies everything read through it.
pub struct HashingReader<R, W> {
    inner: R,
    copy_to: W,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R, io::Sink> {
    /// Hashes and counts, copying nowhere.
    pub fn new(inner: R) -> Self {
        Self::tee(inner, io::sink())
    }
}

impl<R: Read, W: Write> HashingReader<R, W> {
    /// Hashes, counts, and writes every byte read to `copy_to`.
    pub fn tee(inner: R, copy_to: W) -> Self {
        HashingReader {
            inner,
            copy_to,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// The reader being hashed.
    pub fn inner_ref(&self) -> &R {
        &self.inner
    }

    /// Reads what the consumer left unread, so the digest covers it all.
    pub fn drain(&mut self) -> io::Result<()> {
        io::copy(self, &mut io::sink()).map(drop)
    }

    /// The hex SHA-256 and byte count of everything read, and the writer.
    pub fn finish(self) -> (String, u64, W) {
        (
            hex::encode(self.hasher.finalize()),
            self.count,
            self.copy_to,
        )
    }
}

impl<R: Read, W: Write> Read for HashingReader<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.copy_to.write_all(&buf[..n])?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_counts_and_copies() {
        let mut copy = Vec::new();
        let mut reader = HashingReader::tee(&b"abc"[..], &mut copy);
        let mut first = [0u8; 1];
        reader.read_exact(&mut first).unwrap();
        reader.drain().unwrap();
        let (sha, count, _) = reader.finish();
        assert_eq!(
            sha,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(count, 3);
        assert_eq!(copy, b"abc");
    }
}
