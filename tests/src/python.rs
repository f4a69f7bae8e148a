//! A Python program run as a test server (an upstream the test does not write in Rust): it
//! binds 127.0.0.1:0, prints its port as its first line, and is killed on drop.

use std::ffi::OsStr;
use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};

/// A running `python3` server.
pub struct PythonServer {
    child: Child,
    /// The port it printed.
    pub port: u16,
}

impl PythonServer {
    /// `python3 <args>`, once it has printed its port.
    pub fn start<I, S>(args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Self::start_with("python3", args)
    }

    /// `<python> <args>` (a virtualenv's interpreter), once it has printed its port.
    pub fn start_with<P, I, S>(python: P, args: I) -> Self
    where
        P: AsRef<OsStr>,
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut child = Command::new(python)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("the server's first line");
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("the server prints its port first, not {line:?}"));
        PythonServer { child, port }
    }

    /// Its address.
    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }
}

impl Drop for PythonServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
