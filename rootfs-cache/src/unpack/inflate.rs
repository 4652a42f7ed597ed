//! The inflate thread of an unpack: reads a layer blob, detects and undoes
//! its compression, hashes the tar stream (the diff id) and hands it to the
//! writer in pieces, so that inflating and creating files use two cores.

use std::io::{self, BufRead, BufReader, Read};
use std::sync::mpsc;

use sha2::{Digest, Sha256};

/// Compression of a layer blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// Detect the compression of a blob from its first bytes.
pub fn detect_compression(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// Size of the pieces of the uncompressed tar stream that the inflate thread
/// hands to the writer, and of the writer's copy buffer.
pub(super) const CHUNK: usize = 1 << 20;
/// Pieces in flight between the two threads.
const CHUNKS_IN_FLIGHT: usize = 4;

/// A piece of the uncompressed tar stream: `buf[..len]`.
struct Chunk {
    buf: Vec<u8>,
    len: usize,
}

/// The writer's end of the inflate thread: reads the uncompressed tar stream
/// and hands emptied buffers back for reuse.
pub(super) struct ChunkReader {
    chunks: mpsc::Receiver<io::Result<Chunk>>,
    empties: mpsc::SyncSender<Vec<u8>>,
    cur: Chunk,
    pos: usize,
}

/// Start the inflate thread on `input`: the writer reads the uncompressed
/// tar stream from the returned reader (an inflate error arrives there as
/// a read error), and the thread's result is the diff id.
///
/// Not scoped: when the writer fails, the thread may be blocked reading a
/// pipe; it ends at its next read (nobody takes its chunks any more) or at
/// the end of the input, and holds nothing but the input.
pub(super) fn spawn(
    input: impl Read + Send + 'static,
) -> io::Result<(ChunkReader, std::thread::JoinHandle<io::Result<String>>)> {
    let (chunk_tx, chunk_rx) = mpsc::sync_channel(CHUNKS_IN_FLIGHT);
    let (empty_tx, empty_rx) = mpsc::sync_channel(CHUNKS_IN_FLIGHT + 1);
    let thread = std::thread::Builder::new()
        .name("layer-inflate".into())
        .spawn(move || {
            let r = inflate(input, &chunk_tx, &empty_rx);
            if let Err(e) = &r {
                let _ = chunk_tx.send(Err(io::Error::new(e.kind(), e.to_string())));
            }
            r
        })?;
    let reader = ChunkReader {
        chunks: chunk_rx,
        empties: empty_tx,
        cur: Chunk {
            buf: Vec::new(),
            len: 0,
        },
        pos: 0,
    };
    Ok((reader, thread))
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len {
            match self.chunks.recv() {
                Ok(Ok(next)) => {
                    let used = std::mem::replace(&mut self.cur, next);
                    let _ = self.empties.try_send(used.buf);
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                // The inflate thread has finished: end of stream.
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.cur.len - self.pos);
        out[..n].copy_from_slice(&self.cur.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Read all of `input`, decompress it (format detected from the content),
/// hash the uncompressed stream and send it to the writer in [`Chunk`]s.
/// Returns the diff id. Stops early (with `Ok`) when the writer has gone.
fn inflate(
    input: impl Read,
    chunks: &mpsc::SyncSender<io::Result<Chunk>>,
    empties: &mpsc::Receiver<Vec<u8>>,
) -> io::Result<String> {
    let mut buf = BufReader::with_capacity(256 * 1024, input);
    let head = buf.fill_buf()?;
    let mut decompressed: Box<dyn Read> = match detect_compression(head) {
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buf)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(buf)?),
        Compression::None => Box::new(buf),
    };
    let mut hasher = Sha256::new();
    loop {
        let mut piece = empties.try_recv().unwrap_or_default();
        piece.resize(CHUNK, 0);
        let mut len = 0;
        while len < piece.len() {
            match decompressed.read(&mut piece[len..]) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if len == 0 {
            return Ok(format!("sha256:{}", hex::encode(hasher.finalize())));
        }
        hasher.update(&piece[..len]);
        if chunks.send(Ok(Chunk { buf: piece, len })).is_err() {
            return Ok(String::new());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// `n` bytes that do not compress to nothing.
    fn data(n: usize) -> Vec<u8> {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 16) as u8 + b'a'
            })
            .collect()
    }

    fn gzip(b: &[u8]) -> Vec<u8> {
        let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        g.write_all(b).unwrap();
        g.finish().unwrap()
    }

    /// Run the inflate thread on `blob`, as `unpack_layer_from` does, and
    /// read everything back through its `ChunkReader`.
    fn through(blob: Vec<u8>) -> (io::Result<Vec<u8>>, io::Result<String>) {
        let (mut reader, t) = spawn(io::Cursor::new(blob)).unwrap();
        let mut out = Vec::new();
        let read = reader.read_to_end(&mut out).map(|_| out);
        (read, t.join().unwrap())
    }

    fn sha(b: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(b)))
    }

    #[test]
    fn compression_comes_from_the_magic_bytes() {
        assert_eq!(detect_compression(&gzip(b"x")), Compression::Gzip);
        let z = zstd::encode_all(&b"x"[..], 3).unwrap();
        assert_eq!(detect_compression(&z), Compression::Zstd);
        assert_eq!(detect_compression(b"ustar\0"), Compression::None);
        // Too short to tell: a plain tar (which then fails as a tar).
        assert_eq!(detect_compression(&[]), Compression::None);
        assert_eq!(detect_compression(&[0x1f]), Compression::None);
        assert_eq!(detect_compression(&[0x28, 0xb5, 0x2f]), Compression::None);
    }

    #[test]
    fn every_format_arrives_whole_across_chunks_with_its_diff_id() {
        // Larger than the pieces in flight, not a multiple of a piece.
        let raw = data(CHUNK * (CHUNKS_IN_FLIGHT + 2) + 12345);
        let blobs = [
            raw.clone(),
            gzip(&raw),
            zstd::encode_all(&raw[..], 3).unwrap(),
        ];
        for blob in blobs {
            let (out, diff_id) = through(blob);
            let out = out.unwrap();
            assert!(out == raw, "{} bytes back of {}", out.len(), raw.len());
            assert_eq!(diff_id.unwrap(), sha(&raw));
        }
    }

    #[test]
    fn gzip_members_are_read_one_after_another() {
        let raw = data(300_000);
        let (a, b) = raw.split_at(100_000);
        let mut blob = gzip(a);
        blob.extend(gzip(b));
        let (out, diff_id) = through(blob);
        assert!(out.unwrap() == raw);
        assert_eq!(diff_id.unwrap(), sha(&raw));
    }

    #[test]
    fn an_empty_blob_is_an_empty_stream() {
        let (out, diff_id) = through(Vec::new());
        assert!(out.unwrap().is_empty());
        assert_eq!(diff_id.unwrap(), sha(b""));
    }

    #[test]
    fn a_cut_gzip_stream_fails_on_both_ends() {
        let mut blob = gzip(&data(500_000));
        blob.truncate(blob.len() / 2);
        let (out, diff_id) = through(blob);
        assert!(out.is_err());
        assert!(diff_id.is_err());
    }

    #[test]
    fn inflating_stops_when_the_writer_is_gone() {
        let (chunk_tx, chunk_rx) = mpsc::sync_channel(CHUNKS_IN_FLIGHT);
        let (_empty_tx, empty_rx) = mpsc::sync_channel::<Vec<u8>>(1);
        drop(chunk_rx);
        // No diff id: the stream was not read to its end.
        let r = inflate(&data(3 * CHUNK)[..], &chunk_tx, &empty_rx).unwrap();
        assert_eq!(r, "");
    }
}
