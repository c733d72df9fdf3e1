//! The floor: the least a relay can do with the same framing and threading.
//!
//! One thread per connection, blocking sockets, TCP_NODELAY, frames found with
//! the project's codec and forwarded raw to the other member of the pair: no
//! JSON, no state, no authentication. A connection's first frame names its
//! pair (the payload is the key); when both members are there, each gets a
//! [`PAIRED`] frame and from then on every frame goes to the other.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;

use crate::tcp::frame::{self, Decoded};

use super::client::MAX_FRAME;

/// Type of the frame that names the pair (LOGIN_REQUEST's code; the floor reads only the payload).
pub const HELLO: u8 = 0x01;
/// Type of the frame that says the partner is there.
pub const PAIRED: u8 = 0x02;

type Waiting = Arc<Mutex<HashMap<Vec<u8>, (TcpStream, Sender<TcpStream>)>>>;

/// Accepts forever, one thread per connection.
///
/// # Errors
/// If accepting fails for a reason other than a single aborted connection.
pub fn serve(listener: TcpListener) -> io::Result<()> {
    let waiting: Waiting = Arc::default();
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
            Err(e) => return Err(e),
        };
        let waiting = waiting.clone();
        let spawned = thread::Builder::new()
            .name("floor-conn".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                // A connection that ends or misbehaves just ends; the floor keeps serving.
                let _ = relay_connection(stream, &waiting);
            });
        // Out of threads for a moment (the machine's last run still exiting):
        // that connection is dropped, the floor goes on.
        if let Err(e) = spawned {
            eprintln!("floor: no thread for a connection: {e}");
        }
    }
    Ok(())
}

/// Reads the hello, waits for the partner, then forwards until end of stream.
fn relay_connection(mut stream: TcpStream, waiting: &Waiting) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(16 * 1024);
    let key = loop {
        if let Some((decoded, used)) = decode(&buf)? {
            let key = match decoded {
                Decoded::Frame { payload, .. } => payload.to_vec(),
                Decoded::Empty => Vec::new(),
            };
            buf.drain(..used);
            break key;
        }
        read_more(&mut stream, &mut buf)?;
    };
    let peer = pair(&key, &stream, waiting)?;
    forward(stream, peer, buf)
}

/// Hands this connection's writer to its partner and takes the partner's. The
/// second member to arrive acknowledges both before either starts relaying,
/// so no socket ever has two writers at once.
fn pair(key: &[u8], stream: &TcpStream, waiting: &Waiting) -> io::Result<TcpStream> {
    let mine = stream.try_clone()?;
    // Looked up and, if absent, registered under one lock: two members
    // arriving together must not both register (one would never be paired).
    let mut table = waiting.lock().unwrap_or_else(PoisonError::into_inner);
    match table.remove(key) {
        Some((mut theirs, tell)) => {
            drop(table);
            let ack = frame::encode(PAIRED, b"{}");
            theirs.write_all(&ack)?;
            let mut me = mine.try_clone()?;
            me.write_all(&ack)?;
            tell.send(mine)
                .map_err(|_| io::Error::other("partner left"))?;
            Ok(theirs)
        }
        None => {
            let (tx, rx) = mpsc::channel();
            table.insert(key.to_vec(), (mine, tx));
            drop(table);
            rx.recv().map_err(|_| io::Error::other("never paired"))
        }
    }
}

fn decode(buf: &[u8]) -> io::Result<Option<(Decoded<'_>, usize)>> {
    frame::decode(buf, MAX_FRAME).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
    let mut chunk = [0u8; 16 * 1024];
    let n = stream.read(&mut chunk)?;
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// Forwards every complete frame to `peer`, all frames of one read in one write.
fn forward(mut stream: TcpStream, mut peer: TcpStream, mut buf: Vec<u8>) -> io::Result<()> {
    loop {
        let mut whole = 0;
        while let Some((_, used)) = decode(&buf[whole..])? {
            whole += used;
        }
        if whole > 0 {
            peer.write_all(&buf[..whole])?;
            buf.drain(..whole);
        }
        if let Err(e) = read_more(&mut stream, &mut buf) {
            let _ = peer.shutdown(std::net::Shutdown::Write);
            return Err(e);
        }
    }
}

/// The floor relay as its own process (`switchboard-bench floor`), so that it
/// and the daemon are measured the same way; killed when dropped.
pub struct FloorProcess {
    child: std::process::Child,
    pub addr: std::net::SocketAddr,
}

impl FloorProcess {
    /// Runs `bench_binary floor` and reads its `listening on ADDR` line.
    ///
    /// # Errors
    /// If it cannot be spawned or prints no address.
    pub fn start(bench_binary: &std::path::Path) -> io::Result<FloorProcess> {
        use std::io::BufRead;
        let mut child = std::process::Command::new(bench_binary)
            .arg("floor")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let line = child
            .stdout
            .take()
            .and_then(|out| io::BufReader::new(out).lines().next())
            .transpose()?
            .unwrap_or_default();
        match line.strip_prefix("listening on ").map(str::parse) {
            Some(Ok(addr)) => Ok(FloorProcess { child, addr }),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                Err(io::Error::other(format!(
                    "floor printed {line:?}, not `listening on ADDR`"
                )))
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for FloorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::client::Client;

    fn join(addr: std::net::SocketAddr, key: &[u8]) -> Client {
        let mut c = Client::connect(addr).unwrap();
        c.send_raw(&frame::encode(HELLO, key)).unwrap();
        c
    }

    /// Two pairs relay frames only within their pair, byte for byte.
    #[test]
    fn frames_go_to_the_other_member_of_the_pair_only() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || serve(listener));
        let mut a1 = join(addr, b"a");
        let mut b1 = join(addr, b"b");
        let mut a2 = join(addr, b"a");
        let mut b2 = join(addr, b"b");
        for c in [&mut a1, &mut a2, &mut b1, &mut b2] {
            assert_eq!(c.recv().unwrap().unwrap().0, PAIRED);
        }
        a1.send_raw(&frame::encode(0x0F, b"{\"n\":1}")).unwrap();
        b2.send_raw(&frame::encode(0x0F, b"{\"n\":2}")).unwrap();
        a2.send_raw(&frame::encode(0x0F, b"{\"n\":3}")).unwrap();
        assert_eq!(a2.recv().unwrap().unwrap(), (0x0F, b"{\"n\":1}".to_vec()));
        assert_eq!(b1.recv().unwrap().unwrap(), (0x0F, b"{\"n\":2}".to_vec()));
        assert_eq!(a1.recv().unwrap().unwrap(), (0x0F, b"{\"n\":3}".to_vec()));
    }
}
