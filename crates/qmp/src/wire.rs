//! The protocol state machine, free of I/O (`docs/interop/qmp-spec.rst`).
//!
//! ```text
//!   server                                   client
//!   {"QMP": {"version": …, "capabilities": []}}  ──►
//!                              ◄──  {"execute": "qmp_capabilities"}
//!   {"return": {}}                               ──►      (command mode from here)
//!                              ◄──  {"execute": "query-status", "id": 7}
//!   {"return": {"running": true, …}, "id": 7}    ──►
//!   {"event": "STOP", "timestamp": {…}}          ──►      (any time in command mode)
//! ```
//!
//! Input is a stream of JSON objects; [`Framer`] cuts it into candidate texts by tracking
//! strings and bracket depth (as QEMU's json-streamer does), so requests may span lines or
//! share one, and caps each at [`MAX_REQUEST_BYTES`] before anything is parsed. A raw
//! control character or a byte that can never occur in UTF-8 (QEMU's documented way to
//! resynchronise, e.g. 0xFF) ends the current text at once, which then fails to parse.
//! QEMU's extensions are accepted: `'single-quoted'` strings and the `\'` escape (the
//! framer rewrites them to standard JSON as it goes).
//! [`Session`] turns each text into exactly one response line. Output is ASCII (non-ASCII
//! characters are `\u` escapes), one object per line, CRLF-terminated, as QEMU sends it.

use super::command::{decode, CapabilitiesArgs, Controller, Decoded, PROTOCOL_NAMES};
use super::error::{ControlError, ErrorClass};
use super::reply::QmpEvent;
use super::QmpCommand;
use serde_json::{json, Map, Value};
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// The longest request accepted, in bytes; longer ones are refused unparsed.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

/// The `package` string of the greeting and `query-version`.
pub fn package() -> String {
    format!("sevmirror {}", env!("CARGO_PKG_VERSION"))
}

/// One unit of input cut by the [`Framer`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A candidate JSON text (not yet parsed).
    Text(Vec<u8>),
    /// A text exceeded the cap; the input up to the next newline was dropped.
    TooLong,
}

/// Cuts a byte stream into JSON texts without parsing them; memory stays below the cap.
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    max: usize,
    depth: usize,
    /// The quote that opened the current string (`"` or `'`), if inside one.
    quote: Option<u8>,
    escape: bool,
    skipping: bool,
}

impl Framer {
    /// A framer refusing texts longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            max,
            depth: 0,
            quote: None,
            escape: false,
            skipping: false,
        }
    }

    /// Feeds bytes; complete texts are appended to `out`.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<Frame>) {
        for &b in data {
            self.push(b, out);
            if self.buf.len() > self.max {
                out.push(Frame::TooLong);
                self.reset();
                self.skipping = true;
            }
        }
    }

    /// Bytes held for an incomplete text.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    fn reset(&mut self) {
        self.buf.clear();
        self.depth = 0;
        self.quote = None;
        self.escape = false;
    }

    fn emit(&mut self, out: &mut Vec<Frame>) {
        if !self.buf.is_empty() {
            out.push(Frame::Text(std::mem::take(&mut self.buf)));
        }
        self.reset();
    }

    /// Bytes that never occur in UTF-8; QEMU clients send 0xFF to reset the parser.
    fn never_utf8(b: u8) -> bool {
        matches!(b, 0xC0 | 0xC1 | 0xF5..=0xFF)
    }

    fn push(&mut self, b: u8, out: &mut Vec<Frame>) {
        if self.skipping {
            if b == b'\n' {
                self.skipping = false;
            }
            return;
        }
        if let Some(quote) = self.quote {
            if self.escape {
                self.escape = false;
                // `\'` is QEMU's extra escape; JSON has no such escape, so drop the `\`.
                if b != b'\'' {
                    self.buf.push(b'\\');
                }
                self.buf.push(b);
            } else if b == b'\\' {
                self.escape = true;
            } else if b == quote {
                self.buf.push(b'"');
                self.quote = None;
                if self.depth == 0 {
                    self.emit(out);
                }
            } else if b == b'"' {
                // Only inside a single-quoted string.
                self.buf.extend_from_slice(b"\\\"");
            } else if b < 0x20 || Self::never_utf8(b) {
                // Invalid inside a JSON string: end the text here so it fails to parse
                // and the stream resynchronises.
                self.buf.push(b);
                self.emit(out);
            } else {
                self.buf.push(b);
            }
            return;
        }
        match b {
            b' ' | b'\t' | b'\r' | b'\n' => {
                if self.depth == 0 {
                    self.emit(out);
                } else {
                    self.buf.push(b);
                }
            }
            b'{' | b'[' => {
                if self.depth == 0 {
                    self.emit(out);
                }
                self.buf.push(b);
                self.depth += 1;
            }
            b'}' | b']' => {
                self.buf.push(b);
                if self.depth <= 1 {
                    // The end of a top-level value, or a stray closer (a parse error).
                    self.emit(out);
                } else {
                    self.depth -= 1;
                }
            }
            b'"' | b'\'' => {
                if self.depth == 0 {
                    self.emit(out);
                }
                self.buf.push(b'"');
                self.quote = Some(b);
            }
            _ if b < 0x20 || Self::never_utf8(b) => {
                self.buf.push(b);
                self.emit(out);
            }
            _ => self.buf.push(b),
        }
    }
}

/// A checked request (`qapi/qmp-dispatch.c`, `qmp_dispatch_check_obj`).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Request {
    pub(crate) id: Option<Value>,
    pub(crate) execute: String,
    pub(crate) arguments: Option<Map<String, Value>>,
}

/// A request that failed before dispatch, with the `id` to echo if one could be read.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RequestError {
    pub(crate) id: Option<Value>,
    pub(crate) error: ControlError,
}

/// Parses and checks one text as a QMP request, with QEMU's messages.
pub(crate) fn parse_request(text: &[u8]) -> Result<Request, RequestError> {
    let fail = |id: Option<Value>, desc: String| RequestError {
        id,
        error: ControlError::generic(desc),
    };
    let value: Value =
        serde_json::from_slice(text).map_err(|e| fail(None, format!("JSON parse error, {e}")))?;
    let Value::Object(mut obj) = value else {
        return Err(fail(None, "QMP input must be a JSON object".into()));
    };
    let id = obj.remove("id");
    let mut execute = None;
    let mut arguments = None;
    for (key, v) in obj {
        match (key.as_str(), v) {
            ("execute", Value::String(s)) => execute = Some(s),
            ("execute", _) => {
                return Err(fail(
                    id,
                    "QMP input member 'execute' must be a string".into(),
                ));
            }
            ("arguments", Value::Object(m)) => arguments = Some(m),
            ("arguments", _) => {
                return Err(fail(
                    id,
                    "QMP input member 'arguments' must be an object".into(),
                ));
            }
            // Includes `exec-oob`: out-of-band execution is not offered.
            (other, _) => {
                let desc = format!("QMP input member '{other}' is unexpected");
                return Err(fail(id, desc));
            }
        }
    }
    match execute {
        Some(execute) => Ok(Request {
            id,
            execute,
            arguments,
        }),
        None => Err(fail(id, "QMP input lacks member 'execute'".into())),
    }
}

/// Makes serialised JSON ASCII-only: every non-ASCII character (which can only occur
/// inside a string) becomes a `\uXXXX` escape, surrogate pairs beyond the BMP.
fn ascii_only(s: String) -> String {
    if s.is_ascii() {
        return s;
    }
    let mut out = String::with_capacity(s.len() + 32);
    for c in s.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                let _ = write!(out, "\\u{u:04x}");
            }
        }
    }
    out
}

/// One output line: compact JSON, ASCII, CRLF.
fn line(v: &Value) -> String {
    let mut s = ascii_only(v.to_string());
    s.push_str("\r\n");
    s
}

/// `{"QMP": {"version": …, "capabilities": []}}` — no capabilities are offered.
pub fn greeting_line() -> String {
    line(&json!({ "QMP": { "version": version(), "capabilities": [] } }))
}

/// The `query-version` object (also the greeting's `version`).
fn version() -> Value {
    json!({ "qemu": { "micro": 0, "minor": 0, "major": 0 }, "package": package() })
}

/// `{"return": value, "id": id}`.
pub fn return_line(value: Value, id: Option<Value>) -> String {
    let mut obj = Map::new();
    obj.insert("return".into(), value);
    if let Some(id) = id {
        obj.insert("id".into(), id);
    }
    line(&Value::Object(obj))
}

/// `{"error": {"class": …, "desc": …}, "id": id}`.
pub fn error_line(error: &ControlError, id: Option<Value>) -> String {
    let mut obj = Map::new();
    obj.insert(
        "error".into(),
        json!({ "class": error.class.name(), "desc": error.desc }),
    );
    if let Some(id) = id {
        obj.insert("id".into(), id);
    }
    line(&Value::Object(obj))
}

/// `{"event": NAME, "data": {…}, "timestamp": {"seconds": S, "microseconds": US}}`; the
/// timestamp is -1/-1 if the clock is before the epoch, as the spec says.
pub fn event_line(event: &QmpEvent, at: SystemTime) -> String {
    let (seconds, microseconds) = match at.duration_since(UNIX_EPOCH) {
        Ok(d) => (
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            i64::from(d.subsec_micros()),
        ),
        Err(_) => (-1, -1),
    };
    let mut obj = Map::new();
    obj.insert("event".into(), json!(event.name()));
    if let Some(data) = event.data() {
        obj.insert("data".into(), data);
    }
    obj.insert(
        "timestamp".into(),
        json!({ "seconds": seconds, "microseconds": microseconds }),
    );
    line(&Value::Object(obj))
}

/// Where a connection is in the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Only `qmp_capabilities` is accepted; no events are sent.
    Negotiation,
    /// All commands are accepted and events are delivered.
    Command,
}

/// One connection's protocol state: each frame in, one response line out.
#[derive(Debug)]
pub struct Session {
    mode: Mode,
}

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}

impl Session {
    /// A fresh connection, in capabilities negotiation mode.
    pub fn new() -> Self {
        Self {
            mode: Mode::Negotiation,
        }
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Handles one frame; returns the response line to send.
    pub fn handle(&mut self, frame: Frame, controller: &dyn Controller) -> String {
        let text = match frame {
            Frame::Text(t) => t,
            Frame::TooLong => {
                let e = ControlError::generic(format!(
                    "JSON parse error, request longer than {MAX_REQUEST_BYTES} bytes"
                ));
                return error_line(&e, None);
            }
        };
        let req = match parse_request(&text) {
            Ok(r) => r,
            Err(RequestError { id, error }) => return error_line(&error, id),
        };
        match self.dispatch(&req, controller) {
            Ok(v) => return_line(v, req.id),
            Err(e) => error_line(&e, req.id),
        }
    }

    fn dispatch(
        &mut self,
        req: &Request,
        controller: &dyn Controller,
    ) -> Result<Value, ControlError> {
        if self.mode == Mode::Negotiation {
            // monitor/qmp.c: only qmp_capabilities exists in this mode, and its
            // CommandNotFound gets a more useful description.
            if req.execute != "qmp_capabilities" {
                return Err(ControlError::new(
                    ErrorClass::CommandNotFound,
                    "Expecting capabilities negotiation with 'qmp_capabilities'",
                ));
            }
            let Decoded::Capabilities(args) = decode(&req.execute, req.arguments.as_ref())? else {
                return Err(ControlError::generic(
                    "internal error: qmp_capabilities decoded as another command",
                ));
            };
            accept_capabilities(&args)?;
            self.mode = Mode::Command;
            return Ok(json!({}));
        }
        match decode(&req.execute, req.arguments.as_ref())? {
            Decoded::Capabilities(_) => Err(ControlError::new(
                ErrorClass::CommandNotFound,
                "Capabilities negotiation is already complete, command ignored",
            )),
            Decoded::QueryVersion => Ok(version()),
            Decoded::QueryCommands => Ok(Value::Array(
                PROTOCOL_NAMES
                    .iter()
                    .chain(QmpCommand::NAMES)
                    .map(|n| json!({ "name": n }))
                    .collect(),
            )),
            Decoded::Vm(cmd) => {
                let name = cmd.name();
                let reply = controller.execute(cmd.clone())?;
                if !cmd.accepts(&reply) {
                    log::error!("qmp: the VMM answered {name} with a {} reply", reply.kind());
                    return Err(ControlError::generic(format!(
                        "internal error: {name} produced a {} reply",
                        reply.kind()
                    )));
                }
                serde_json::to_value(&reply).map_err(|e| {
                    ControlError::generic(format!(
                        "internal error: cannot encode the {name} reply: {e}"
                    ))
                })
            }
        }
    }
}

/// No capability is offered, so enabling any fails as QEMU words it
/// (`monitor/qmp-cmds-control.c`, `qmp_caps_accept`).
fn accept_capabilities(args: &CapabilitiesArgs) -> Result<(), ControlError> {
    match args.enable.as_deref() {
        None | Some([]) => Ok(()),
        Some(caps) => {
            let names: Vec<&str> = caps.iter().map(|c| c.name()).collect();
            Err(ControlError::generic(format!(
                "Capability {} not available",
                names.join(", ")
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply::{MigrationStatus, QmpReply, RunState, ShutdownCause, StatusInfo};
    use std::sync::Mutex;
    use std::time::Duration;

    /// Records commands, answers with canned replies.
    #[derive(Default)]
    struct Fake {
        seen: Mutex<Vec<QmpCommand>>,
    }

    impl Controller for Fake {
        fn execute(&self, cmd: QmpCommand) -> Result<QmpReply, ControlError> {
            self.seen.lock().unwrap().push(cmd.clone());
            match cmd {
                QmpCommand::QueryStatus => Ok(QmpReply::Status(StatusInfo {
                    status: RunState::Paused,
                })),
                QmpCommand::Cont => Err(ControlError::not_permitted("cont", RunState::InMigrate)),
                QmpCommand::QueryHelper => Ok(QmpReply::Empty), // a VMM bug: wrong kind
                QmpCommand::Stop => Err(ControlError::new(ErrorClass::DeviceNotActive, "No vCPU")),
                _ => Ok(QmpReply::Empty),
            }
        }
    }

    fn frames(input: &[u8]) -> Vec<Frame> {
        let mut f = Framer::new(64);
        let mut out = Vec::new();
        f.feed(input, &mut out);
        out
    }

    fn texts(input: &[u8]) -> Vec<String> {
        frames(input)
            .into_iter()
            .map(|f| match f {
                Frame::Text(t) => String::from_utf8_lossy(&t).into_owned(),
                Frame::TooLong => "<too long>".into(),
            })
            .collect()
    }

    #[test]
    fn framer_cuts_objects_across_and_within_lines() {
        assert_eq!(texts(b"{\"a\":1}\n"), ["{\"a\":1}"]);
        assert_eq!(texts(b"{\"a\":1}{\"b\":[2]}"), ["{\"a\":1}", "{\"b\":[2]}"]);
        assert_eq!(
            texts(b"{\n  \"a\": {\"b\": 1}\n}\r\n"),
            ["{\n  \"a\": {\"b\": 1}\n}"]
        );
        assert_eq!(texts(b"{\"s\":\"}{\\\"\"}"), ["{\"s\":\"}{\\\"\"}"]);
        assert_eq!(texts(b"42 true \"x\"{}"), ["42", "true", "\"x\"", "{}"]);
        assert_eq!(texts(b"  \r\n\t "), Vec::<String>::new());
        assert_eq!(texts(b"}{}"), ["}", "{}"]);
        assert_eq!(texts(b"{\"a\":"), Vec::<String>::new());
    }

    #[test]
    fn framer_accepts_qemus_single_quotes() {
        assert_eq!(texts(b"{'execute':'stop'}"), [r#"{"execute":"stop"}"#]);
        assert_eq!(
            texts(br#"{'a':'say "hi", it\'s'}"#),
            [r#"{"a":"say \"hi\", it's"}"#]
        );
        assert_eq!(
            texts(br#"{"a":"it\'s \"q\" \\"}"#),
            [r#"{"a":"it's \"q\" \\"}"#]
        );
    }

    #[test]
    fn framer_resynchronises_on_control_and_non_utf8_bytes() {
        assert_eq!(
            texts(b"{\"execute\": \xff{}"),
            ["{\"execute\": \u{fffd}", "{}"]
        );
        assert_eq!(texts(b"{\"a\x01\":1}\n{}"), ["{\"a\u{1}", "\":1}\n", "{}"]);
        assert_eq!(texts(b"{\x1b{}"), ["{\u{1b}", "{}"]);
    }

    #[test]
    fn framer_caps_length_and_skips_to_the_next_line() {
        let mut input = b"{\"a\":\"".to_vec();
        input.extend(std::iter::repeat_n(b'x', 100));
        input.extend(b"\"}\n{}\n");
        assert_eq!(texts(&input), ["<too long>", "{}"]);
        let mut f = Framer::new(64);
        let mut out = Vec::new();
        f.feed(&[b'['; 1000], &mut out);
        assert_eq!(out, [Frame::TooLong]);
        assert_eq!(f.pending(), 0);
    }

    #[test]
    fn framer_survives_arbitrary_bytes() {
        let mut x: u32 = 0x1234_5678;
        let mut data = Vec::new();
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            data.push(b"{}[]\"'\\ \n:,ab1\x00\xff"[(x % 16) as usize]);
        }
        let mut f = Framer::new(4096);
        let mut out = Vec::new();
        for chunk in data.chunks(37) {
            f.feed(chunk, &mut out);
            assert!(f.pending() <= 4096);
        }
        let c = Fake::default();
        let mut s = Session::new();
        for frame in out {
            let l = s.handle(frame, &c);
            assert!(l.ends_with("\r\n"));
            let v: Value = serde_json::from_str(&l).unwrap();
            assert!(v.get("error").is_some() || v.get("return").is_some());
        }
    }

    fn run(s: &mut Session, c: &Fake, input: &str) -> Value {
        let mut out = Vec::new();
        Framer::new(MAX_REQUEST_BYTES).feed(format!("{input}\n").as_bytes(), &mut out);
        assert_eq!(out.len(), 1, "{input}");
        let l = s.handle(out.remove(0), c);
        assert!(
            l.ends_with("\r\n") && !l[..l.len() - 2].contains('\n'),
            "{l:?}"
        );
        serde_json::from_str(&l).unwrap()
    }

    fn negotiated(c: &Fake) -> Session {
        let mut s = Session::new();
        assert_eq!(
            run(&mut s, c, r#"{"execute":"qmp_capabilities"}"#),
            json!({"return": {}})
        );
        assert_eq!(s.mode(), Mode::Command);
        s
    }

    #[test]
    fn greeting_is_qemus_shape() {
        let l = greeting_line();
        assert!(l.ends_with("\r\n"));
        let v: Value = serde_json::from_str(&l).unwrap();
        assert_eq!(
            v,
            json!({"QMP": {"version": {"qemu": {"micro": 0, "minor": 0, "major": 0},
                   "package": format!("sevmirror {}", env!("CARGO_PKG_VERSION"))},
                   "capabilities": []}})
        );
    }

    #[test]
    fn commands_before_negotiation_are_refused() {
        let c = Fake::default();
        let mut s = Session::new();
        let want = json!({"error": {"class": "CommandNotFound",
            "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}, "id": 1});
        assert_eq!(
            run(&mut s, &c, r#"{"execute":"query-status","id":1}"#),
            want
        );
        assert_eq!(
            run(
                &mut s,
                &c,
                r#"{"execute":"nonsense","arguments":{"x":1},"id":1}"#
            ),
            want
        );
        assert!(c.seen.lock().unwrap().is_empty());
        assert_eq!(s.mode(), Mode::Negotiation);
        // Request-level errors keep their own text.
        assert_eq!(
            run(&mut s, &c, r#"{"id":1}"#),
            json!({"error": {"class": "GenericError",
                "desc": "QMP input lacks member 'execute'"}, "id": 1})
        );
    }

    #[test]
    fn capabilities_negotiation() {
        let c = Fake::default();
        let mut s = Session::new();
        assert_eq!(
            run(
                &mut s,
                &c,
                r#"{"execute":"qmp_capabilities","arguments":{"enable":["oob"]},"id":"a"}"#
            ),
            json!({"error": {"class": "GenericError", "desc": "Capability oob not available"}, "id": "a"})
        );
        assert_eq!(
            run(
                &mut s,
                &c,
                r#"{"execute":"qmp_capabilities","arguments":{"bogus":1}}"#
            ),
            json!({"error": {"class": "GenericError", "desc": "Parameter 'bogus' is unexpected"}})
        );
        assert_eq!(s.mode(), Mode::Negotiation);
        assert_eq!(
            run(
                &mut s,
                &c,
                r#"{"execute":"qmp_capabilities","arguments":{"enable":[]},"id":2}"#
            ),
            json!({"return": {}, "id": 2})
        );
        assert_eq!(s.mode(), Mode::Command);
        assert_eq!(
            run(&mut s, &c, r#"{"execute":"qmp_capabilities"}"#),
            json!({"error": {"class": "CommandNotFound",
                "desc": "Capabilities negotiation is already complete, command ignored"}})
        );
    }

    #[test]
    fn ids_are_echoed_verbatim() {
        let c = Fake::default();
        let mut s = negotiated(&c);
        for id in [
            json!(1),
            json!("abc"),
            json!({"n": [1, 2]}),
            json!(null),
            json!(-7),
            json!(18446744073709551615u64),
            json!(true),
        ] {
            let req = json!({"execute": "stop", "id": id}).to_string();
            assert_eq!(run(&mut s, &c, &req)["id"], id);
            let req = json!({"execute": "query-status", "id": id}).to_string();
            assert_eq!(run(&mut s, &c, &req)["id"], id);
        }
        let v = run(&mut s, &c, r#"{"execute":"query-status"}"#);
        assert!(v.get("id").is_none(), "{v}");
    }

    #[test]
    fn request_shape_errors() {
        let c = Fake::default();
        let mut s = negotiated(&c);
        let cases = [
            (
                r#"[1,2]"#,
                json!({"error": {"class": "GenericError", "desc": "QMP input must be a JSON object"}}),
            ),
            (
                r#""query-status""#,
                json!({"error": {"class": "GenericError", "desc": "QMP input must be a JSON object"}}),
            ),
            (
                r#"{"execute":7,"id":3}"#,
                json!({"error": {"class": "GenericError", "desc": "QMP input member 'execute' must be a string"}, "id": 3}),
            ),
            (
                r#"{"execute":"stop","arguments":[],"id":3}"#,
                json!({"error": {"class": "GenericError", "desc": "QMP input member 'arguments' must be an object"}, "id": 3}),
            ),
            (
                r#"{"exec-oob":"stop","id":3}"#,
                json!({"error": {"class": "GenericError", "desc": "QMP input member 'exec-oob' is unexpected"}, "id": 3}),
            ),
            (
                r#"{"execute":"stop","extra":0}"#,
                json!({"error": {"class": "GenericError", "desc": "QMP input member 'extra' is unexpected"}}),
            ),
            (
                r#"{"arguments":{}}"#,
                json!({"error": {"class": "GenericError", "desc": "QMP input lacks member 'execute'"}}),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(run(&mut s, &c, input), want, "{input}");
        }
        assert!(c.seen.lock().unwrap().is_empty());
    }

    #[test]
    fn malformed_json_is_a_generic_parse_error_without_id() {
        let c = Fake::default();
        let mut s = negotiated(&c);
        for bad in [
            r#"{"execute": }"#,
            r#"{"execute":"stop",}"#,
            "nul",
            "}",
            "{execute:1}",
        ] {
            let v = run(&mut s, &c, bad);
            assert_eq!(v["error"]["class"], "GenericError", "{bad}");
            let desc = v["error"]["desc"].as_str().unwrap();
            assert!(desc.starts_with("JSON parse error, "), "{bad}: {desc}");
            assert!(v.get("id").is_none());
        }
        let l = s.handle(Frame::Text(b"{\"execute\":\"\xc3\x28\"}".to_vec()), &c);
        assert!(l.contains("JSON parse error"), "{l}");
        let l = s.handle(Frame::TooLong, &c);
        assert_eq!(
            serde_json::from_str::<Value>(&l).unwrap(),
            json!({"error": {"class": "GenericError",
                "desc": format!("JSON parse error, request longer than {MAX_REQUEST_BYTES} bytes")}})
        );
        // The connection still works afterwards.
        assert_eq!(
            run(&mut s, &c, r#"{"execute":"stop","id":9}"#)["error"]["class"],
            "DeviceNotActive"
        );
    }

    #[test]
    fn commands_reach_the_controller_and_errors_keep_their_class() {
        let c = Fake::default();
        let mut s = negotiated(&c);
        assert_eq!(
            run(&mut s, &c, r#"{"execute":"query-status","id":1}"#),
            json!({"return": {"running": false, "singlestep": false, "status": "paused"}, "id": 1})
        );
        assert_eq!(
            run(&mut s, &c, r#"{"execute":"cont"}"#),
            json!({"error": {"class": "GenericError",
                "desc": "The command 'cont' isn't permitted in 'inmigrate' state"}})
        );
        assert_eq!(
            run(&mut s, &c, r#"{"execute":"stop"}"#),
            json!({"error": {"class": "DeviceNotActive", "desc": "No vCPU"}})
        );
        assert_eq!(
            run(
                &mut s,
                &c,
                r#"{"execute":"migrate","arguments":{"uri":"tcp:127.0.0.1:4444"}}"#
            ),
            json!({"return": {}})
        );
        assert_eq!(
            run(&mut s, &c, r#"{"execute":"frob","id":5}"#),
            json!({"error": {"class": "CommandNotFound", "desc": "The command frob has not been found"}, "id": 5})
        );
        assert_eq!(
            run(&mut s, &c, r#"{"execute":"migrate","arguments":{},"id":6}"#),
            json!({"error": {"class": "GenericError", "desc": "Parameter 'uri' is missing"}, "id": 6})
        );
        let seen = c.seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 4);
        assert_eq!(
            seen[3],
            QmpCommand::Migrate(super::super::Migrate {
                uri: "tcp:127.0.0.1:4444".into(),
                commit_file: None,
            })
        );
    }

    #[test]
    fn a_mismatched_reply_becomes_an_internal_error() {
        let c = Fake::default();
        let mut s = negotiated(&c);
        let v = run(&mut s, &c, r#"{"execute":"query-helper"}"#);
        assert_eq!(v["error"]["class"], "GenericError");
        assert_eq!(
            v["error"]["desc"],
            "internal error: query-helper produced a empty reply"
        );
    }

    #[test]
    fn protocol_queries_are_answered_locally() {
        let c = Fake::default();
        let mut s = negotiated(&c);
        let v = run(&mut s, &c, r#"{"execute":"query-version"}"#);
        assert_eq!(
            v["return"]["qemu"],
            json!({"micro": 0, "minor": 0, "major": 0})
        );
        let v = run(&mut s, &c, r#"{"execute":"query-commands"}"#);
        let names: Vec<&str> = v["return"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert!(
            names.contains(&"qmp_capabilities") && names.contains(&"migrate_cancel"),
            "{names:?}"
        );
        assert_eq!(names.len(), PROTOCOL_NAMES.len() + QmpCommand::NAMES.len());
        assert!(c.seen.lock().unwrap().is_empty());
    }

    #[test]
    fn output_is_ascii() {
        let e = ControlError::generic("cannot open /tmp/é/𝄞");
        let l = error_line(&e, Some(json!("ü")));
        assert!(l.is_ascii(), "{l}");
        let v: Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["error"]["desc"], "cannot open /tmp/é/𝄞");
        assert_eq!(v["id"], "ü");
    }

    #[test]
    fn events_have_qemus_shape() {
        let at = UNIX_EPOCH + Duration::new(1_267_040_730, 682_951_000);
        let l = event_line(&QmpEvent::Stop, at);
        assert_eq!(
            serde_json::from_str::<Value>(&l).unwrap(),
            json!({"event": "STOP", "timestamp": {"seconds": 1_267_040_730, "microseconds": 682_951}})
        );
        let l = event_line(
            &QmpEvent::Shutdown {
                reason: ShutdownCause::HostQmpQuit,
            },
            at,
        );
        assert_eq!(
            serde_json::from_str::<Value>(&l).unwrap()["data"],
            json!({"guest": false, "reason": "host-qmp-quit"})
        );
        let l = event_line(
            &QmpEvent::Migration {
                status: MigrationStatus::Active,
            },
            UNIX_EPOCH - Duration::from_secs(1),
        );
        assert_eq!(
            serde_json::from_str::<Value>(&l).unwrap(),
            json!({"event": "MIGRATION", "data": {"status": "active"},
                   "timestamp": {"seconds": -1, "microseconds": -1}})
        );
    }
}
