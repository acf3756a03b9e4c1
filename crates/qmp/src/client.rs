//! A QMP client: connects, negotiates, runs commands, collects events.
//!
//! Works against sevmirror and against QEMU alike (it accepts pretty-printed and
//! multi-object input, and skips events and responses to other ids while waiting).

use super::error::ErrorClass;
use super::wire::{Frame, Framer};
use serde_json::{json, Map, Value};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The longest message accepted from a server.
const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// Events kept for [`QmpClient::take_events`] / [`QmpClient::wait_event`]; older ones
/// are dropped first.
const MAX_KEPT_EVENTS: usize = 1024;

/// An error the server returned: `{"error": {"class": …, "desc": …}}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QmpErrorReply {
    /// The class as sent (QEMU may send classes this build does not know).
    pub class: String,
    /// The description.
    pub desc: String,
}

impl QmpErrorReply {
    /// The class, if it is one of QEMU's known classes.
    pub fn class(&self) -> Option<ErrorClass> {
        ErrorClass::from_name(&self.class)
    }
}

/// An event received from the server.
#[derive(Clone, Debug, PartialEq)]
pub struct ReceivedEvent {
    /// The event name, e.g. `MIGRATION`.
    pub name: String,
    /// The `data` member; `Value::Null` when the event has none.
    pub data: Value,
    /// Seconds of the server's timestamp (-1 if the server had no clock).
    pub seconds: i64,
    /// Microseconds of the server's timestamp.
    pub microseconds: i64,
}

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be connected.
    #[error("cannot connect to {path}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The peer did not greet like a QMP server.
    #[error("{path} is not a QMP server: {detail}")]
    NotQmp {
        /// The socket path.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// Writing a request failed.
    #[error("cannot send {command}")]
    Send {
        /// The command.
        command: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Reading failed.
    #[error("connection lost while waiting for {what}")]
    Receive {
        /// What was awaited.
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The server closed the connection.
    #[error("the server closed the connection while we waited for {what}")]
    Closed {
        /// What was awaited.
        what: String,
    },
    /// Nothing arrived in time.
    #[error("timed out after {} s waiting for {what}", timeout.as_secs_f64())]
    Timeout {
        /// What was awaited.
        what: String,
        /// The time allowed.
        timeout: Duration,
    },
    /// The server sent something that is not a QMP message.
    #[error("the server sent an invalid message: {detail}")]
    Protocol {
        /// What was wrong.
        detail: String,
    },
    /// `execute` was given arguments that are not a JSON object.
    #[error("the arguments of {command} must be a JSON object")]
    BadArguments {
        /// The command.
        command: String,
    },
    /// The server answered with a QMP error.
    #[error("{}: {}", .0.class, .0.desc)]
    Qmp(QmpErrorReply),
}

/// A negotiated QMP connection.
#[derive(Debug)]
pub struct QmpClient {
    stream: UnixStream,
    framer: Framer,
    frames: VecDeque<Frame>,
    events: VecDeque<ReceivedEvent>,
    next_id: u64,
    timeout: Option<Duration>,
    greeting: Value,
}

impl QmpClient {
    /// Connects to `path`, reads the greeting and negotiates capabilities (none are
    /// enabled). `timeout` bounds each wait for the server (`None` waits forever).
    pub fn connect(path: impl AsRef<Path>, timeout: Option<Duration>) -> Result<Self, ClientError> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.into(),
            source,
        })?;
        let mut client = Self {
            stream,
            framer: Framer::new(MAX_MESSAGE_BYTES),
            frames: VecDeque::new(),
            events: VecDeque::new(),
            next_id: 1,
            timeout,
            greeting: Value::Null,
        };
        let not_qmp = |detail: String| ClientError::NotQmp {
            path: path.into(),
            detail,
        };
        let greeting = match client.read_message(client.deadline(), timeout, "the QMP greeting") {
            Ok(v) => v,
            Err(ClientError::Protocol { detail }) => return Err(not_qmp(detail)),
            Err(e) => return Err(e),
        };
        match greeting.get("QMP") {
            Some(qmp) if qmp.get("version").is_some() => client.greeting = qmp.clone(),
            _ => return Err(not_qmp(format!("unexpected greeting {greeting}"))),
        }
        client.execute("qmp_capabilities", Value::Null)?;
        Ok(client)
    }

    /// The greeting's `QMP` object (`version`, `capabilities`).
    pub fn greeting(&self) -> &Value {
        &self.greeting
    }

    /// Changes the time allowed for each wait (`None` waits forever).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    /// Runs `command` with `args` (a JSON object, or `Value::Null` for none) and returns
    /// its `return` value. Events arriving meanwhile are kept for
    /// [`take_events`](Self::take_events) and [`wait_event`](Self::wait_event).
    pub fn execute(&mut self, command: &str, args: Value) -> Result<Value, ClientError> {
        let mut req = Map::new();
        req.insert("execute".into(), json!(command));
        match args {
            Value::Null => {}
            Value::Object(m) => {
                req.insert("arguments".into(), Value::Object(m));
            }
            _ => {
                return Err(ClientError::BadArguments {
                    command: command.into(),
                })
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        req.insert("id".into(), json!(id));
        let mut text = Value::Object(req).to_string();
        text.push_str("\r\n");
        let send_err = |source| ClientError::Send {
            command: command.into(),
            source,
        };
        self.stream
            .set_write_timeout(self.timeout)
            .map_err(send_err)?;
        self.stream.write_all(text.as_bytes()).map_err(send_err)?;

        let deadline = self.deadline();
        let what = format!("the reply to {command}");
        loop {
            let mut msg = self.read_message(deadline, self.timeout, &what)?;
            if msg.get("event").is_some() {
                self.keep_event(&msg)?;
                continue;
            }
            let is_reply = msg.get("return").is_some() || msg.get("error").is_some();
            if !is_reply {
                return Err(ClientError::Protocol {
                    detail: format!("neither reply nor event: {msg}"),
                });
            }
            // Replies to other ids are dropped, as the spec advises; one without an id is
            // ours (errors found before the server could read the id have none).
            if msg.get("id").is_some_and(|v| *v != json!(id)) {
                continue;
            }
            let Some(obj) = msg.as_object_mut() else {
                continue;
            };
            if let Some(ret) = obj.remove("return") {
                return Ok(ret);
            }
            let err = obj.remove("error").unwrap_or(Value::Null);
            let text = |k: &str| err.get(k).and_then(Value::as_str).map(str::to_string);
            return match (text("class"), text("desc")) {
                (Some(class), Some(desc)) => Err(ClientError::Qmp(QmpErrorReply { class, desc })),
                _ => Err(ClientError::Protocol {
                    detail: format!("malformed error {err}"),
                }),
            };
        }
    }

    /// The events received so far, oldest first; the buffer is emptied.
    pub fn take_events(&mut self) -> Vec<ReceivedEvent> {
        self.events.drain(..).collect()
    }

    /// Waits up to `timeout` for event `name` (or returns a matching one already
    /// received); other events are kept.
    pub fn wait_event(
        &mut self,
        name: &str,
        timeout: Duration,
    ) -> Result<ReceivedEvent, ClientError> {
        if let Some(i) = self.events.iter().position(|e| e.name == name) {
            if let Some(e) = self.events.remove(i) {
                return Ok(e);
            }
        }
        let deadline = Instant::now().checked_add(timeout);
        let what = format!("event {name}");
        loop {
            let msg = self.read_message(deadline, Some(timeout), &what)?;
            if msg.get("event").is_none() {
                continue; // a reply nobody waits for
            }
            let ev = parse_event(&msg)?;
            if ev.name == name {
                return Ok(ev);
            }
            self.push_event(ev);
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.timeout.and_then(|t| Instant::now().checked_add(t))
    }

    fn keep_event(&mut self, msg: &Value) -> Result<(), ClientError> {
        let ev = parse_event(msg)?;
        self.push_event(ev);
        Ok(())
    }

    fn push_event(&mut self, ev: ReceivedEvent) {
        if self.events.len() >= MAX_KEPT_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(ev);
    }

    /// Reads the next complete message, waiting until `deadline` (`allowed` is only for
    /// the timeout error).
    fn read_message(
        &mut self,
        deadline: Option<Instant>,
        allowed: Option<Duration>,
        what: &str,
    ) -> Result<Value, ClientError> {
        let mut buf = [0u8; 8192];
        loop {
            if let Some(frame) = self.frames.pop_front() {
                return match frame {
                    Frame::Text(t) => {
                        serde_json::from_slice(&t).map_err(|e| ClientError::Protocol {
                            detail: format!("not JSON ({e})"),
                        })
                    }
                    Frame::TooLong => Err(ClientError::Protocol {
                        detail: format!("a message longer than {MAX_MESSAGE_BYTES} bytes"),
                    }),
                };
            }
            let wait = match deadline {
                None => None,
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Err(timed_out(what, allowed)),
                },
            };
            let recv_err = |source| ClientError::Receive {
                what: what.into(),
                source,
            };
            self.stream.set_read_timeout(wait).map_err(recv_err)?;
            match self.stream.read(&mut buf) {
                Ok(0) => return Err(ClientError::Closed { what: what.into() }),
                Ok(n) => {
                    let mut out = Vec::new();
                    self.framer.feed(buf.get(..n).unwrap_or_default(), &mut out);
                    self.frames.extend(out);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(timed_out(what, allowed));
                }
                Err(e) => return Err(recv_err(e)),
            }
        }
    }
}

fn timed_out(what: &str, allowed: Option<Duration>) -> ClientError {
    ClientError::Timeout {
        what: what.into(),
        timeout: allowed.unwrap_or_default(),
    }
}

fn parse_event(msg: &Value) -> Result<ReceivedEvent, ClientError> {
    let Some(name) = msg.get("event").and_then(Value::as_str) else {
        return Err(ClientError::Protocol {
            detail: format!("event without a name: {msg}"),
        });
    };
    let ts = msg.get("timestamp");
    let field = |k: &str| {
        ts.and_then(|t| t.get(k))
            .and_then(Value::as_i64)
            .unwrap_or(-1)
    };
    Ok(ReceivedEvent {
        name: name.to_string(),
        data: msg.get("data").cloned().unwrap_or(Value::Null),
        seconds: field("seconds"),
        microseconds: field("microseconds"),
    })
}
