//! A small blocking HTTP/1.1 client for the admin API: one request per connection
//! (`Connection: close`), over the daemon's unix socket or plain TCP.
//!
//! Responses are read by `Content-Length`, by `Transfer-Encoding: chunked`, or to the end of
//! the stream; header and body sizes are bounded so a confused peer cannot exhaust memory.

use std::{
    fmt,
    io::{self, BufRead, BufReader, Read, Write},
    net::{TcpStream, ToSocketAddrs},
    os::unix::net::UnixStream,
    path::PathBuf,
    time::Duration,
};

/// Connect, read and write timeout of a request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest status or header line accepted.
const MAX_LINE: usize = 16 * 1024;
/// Most header lines accepted.
const MAX_HEADERS: usize = 128;
/// Largest body accepted (a `top` or `rules` answer is far smaller).
const MAX_BODY: usize = 64 * 1024 * 1024;

/// Where the admin API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// The daemon's unix socket (the default, local, root only).
    Unix(PathBuf),
    /// The optional TCP listener: `host:port` to connect to, the `Host` header, and a path
    /// prefix put before every route (empty for none).
    Tcp {
        address: String,
        authority: String,
        prefix: String,
    },
}

impl Endpoint {
    /// Parses `http://host[:port][/prefix]`. HTTPS is not spoken by this client.
    pub fn from_url(url: &str) -> Result<Endpoint, String> {
        let rest = if let Some(rest) = url.strip_prefix("http://") {
            rest
        } else if url.starts_with("https://") {
            return Err(format!(
                "`{url}`: https is not supported; the TCP admin API speaks plain http (put it \
                 behind a TLS proxy or an SSH tunnel to reach it over untrusted networks)"
            ));
        } else {
            return Err(format!(
                "`{url}` is not an admin API URL: expected http://HOST:PORT, e.g. \
                 http://127.0.0.1:9443"
            ));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(format!(
                "`{url}` is not an admin API URL: expected http://HOST:PORT"
            ));
        }
        if path.contains(['?', '#']) {
            return Err(format!(
                "`{url}`: the admin API URL takes no query or fragment"
            ));
        }
        // `[v6]:port`, `[v6]`, `host:port` or `host`.
        let has_port = match authority.rfind(']') {
            Some(close) => authority[close..].contains(':'),
            None => authority.contains(':'),
        };
        let address = if has_port {
            let port = &authority[authority.rfind(':').unwrap_or(0) + 1..];
            if port.parse::<u16>().is_err() {
                return Err(format!("`{url}`: `{port}` is not a port"));
            }
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(Endpoint::Tcp {
            address,
            authority: authority.to_string(),
            prefix: path.trim_end_matches('/').to_string(),
        })
    }

    /// How the endpoint is named in messages.
    pub fn describe(&self) -> String {
        match self {
            Endpoint::Unix(path) => format!("admin socket {}", path.display()),
            Endpoint::Tcp { address, .. } => format!("admin API at {address}"),
        }
    }
}

/// One request.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub method: &'a str,
    /// Path and query, e.g. `/v1/top?by=drops&limit=20`.
    pub path: &'a str,
    /// A JSON body.
    pub body: Option<Vec<u8>>,
}

/// A parsed response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    /// Names lower-cased, in order of arrival.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header of that (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// True for `application/problem+json` (RFC 9457).
    pub fn is_problem(&self) -> bool {
        self.header("content-type").is_some_and(|t| {
            t.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("application/problem+json")
        })
    }
}

/// Why a request got no response.
#[derive(Debug)]
pub enum ClientError {
    /// No connection: nothing listens there, no permission, timeout, name resolution.
    Connect {
        endpoint: Endpoint,
        source: io::Error,
    },
    /// The connection broke or timed out during the exchange: the request may or may not
    /// have been carried out.
    Exchange(io::Error),
    /// The peer answered something that is not HTTP/1.x.
    Malformed(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Connect { endpoint, source } => {
                write!(f, "cannot connect to the {}: {source}", endpoint.describe())
            }
            ClientError::Exchange(e) if is_timeout(e) => write!(
                f,
                "the daemon did not answer within {}s (the request may or may not have been \
                 carried out)",
                DEFAULT_TIMEOUT.as_secs()
            ),
            ClientError::Exchange(e) => write!(
                f,
                "the connection to the daemon broke: {e} (the request may or may not have \
                 been carried out)"
            ),
            ClientError::Malformed(what) => {
                write!(f, "the daemon's answer is not valid HTTP: {what}")
            }
        }
    }
}

pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

/// A client of one endpoint.
#[derive(Debug, Clone)]
pub struct Client {
    pub endpoint: Endpoint,
    pub token: Option<String>,
    pub timeout: Duration,
}

impl Client {
    pub fn new(endpoint: Endpoint, token: Option<String>) -> Client {
        Client {
            endpoint,
            token,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Sends the request on a fresh connection and reads the whole response.
    pub fn send(&self, request: &Request<'_>) -> Result<Response, ClientError> {
        let connect_error = |source| ClientError::Connect {
            endpoint: self.endpoint.clone(),
            source,
        };
        match &self.endpoint {
            Endpoint::Unix(path) => {
                let stream = UnixStream::connect(path).map_err(connect_error)?;
                stream
                    .set_read_timeout(Some(self.timeout))
                    .and_then(|()| stream.set_write_timeout(Some(self.timeout)))
                    .map_err(ClientError::Exchange)?;
                self.exchange(stream, "localhost", "", request)
            }
            Endpoint::Tcp {
                address,
                authority,
                prefix,
            } => {
                let stream = connect_tcp(address, self.timeout).map_err(connect_error)?;
                stream
                    .set_read_timeout(Some(self.timeout))
                    .and_then(|()| stream.set_write_timeout(Some(self.timeout)))
                    .map_err(ClientError::Exchange)?;
                self.exchange(stream, authority, prefix, request)
            }
        }
    }

    fn exchange<S: Read + Write>(
        &self,
        mut stream: S,
        host: &str,
        prefix: &str,
        request: &Request<'_>,
    ) -> Result<Response, ClientError> {
        let head = encode_request_head(
            request,
            host,
            prefix,
            self.token.as_deref(),
            request.body.as_ref().map(Vec::len),
        );
        stream
            .write_all(head.as_bytes())
            .and_then(|()| match &request.body {
                Some(body) => stream.write_all(body),
                None => Ok(()),
            })
            .and_then(|()| stream.flush())
            .map_err(ClientError::Exchange)?;
        read_response(&mut BufReader::new(stream), request.method == "HEAD")
    }
}

fn connect_tcp(address: &str, timeout: Duration) -> io::Result<TcpStream> {
    let mut last = None;
    for addr in address.to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("`{address}` resolves to no address"),
        )
    }))
}

/// The request line and headers, ending with the blank line.
pub fn encode_request_head(
    request: &Request<'_>,
    host: &str,
    prefix: &str,
    token: Option<&str>,
    body_len: Option<usize>,
) -> String {
    let mut head = format!(
        "{} {prefix}{} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: throttle-ctl/{}\r\n\
         Accept: application/json, application/problem+json\r\nConnection: close\r\n",
        request.method,
        request.path,
        env!("CARGO_PKG_VERSION")
    );
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    match body_len {
        Some(len) => head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {len}\r\n"
        )),
        // POST and DELETE without a body still say so, for servers that insist.
        None if request.method != "GET" && request.method != "HEAD" => {
            head.push_str("Content-Length: 0\r\n")
        }
        None => {}
    }
    head.push_str("\r\n");
    head
}

/// Reads one response (skipping interim 1xx ones). `head_only`: the request was HEAD, so no
/// body follows whatever the headers say.
pub fn read_response<R: BufRead>(reader: &mut R, head_only: bool) -> Result<Response, ClientError> {
    loop {
        let status_line = read_line(reader)?.ok_or_else(|| {
            ClientError::Malformed("the connection closed before any answer".into())
        })?;
        let (status, reason) = parse_status_line(&status_line)?;
        let headers = read_headers(reader)?;
        if (100..200).contains(&status) {
            continue;
        }
        let mut response = Response {
            status,
            reason,
            headers,
            body: Vec::new(),
        };
        if head_only || status == 204 || status == 304 {
            return Ok(response);
        }
        let chunked = response.header("transfer-encoding").is_some_and(|te| {
            te.split(',')
                .next_back()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
        });
        response.body = if chunked {
            read_chunked(reader)?
        } else if let Some(length) = response.header("content-length") {
            let length: usize = length
                .trim()
                .parse()
                .map_err(|_| ClientError::Malformed(format!("bad Content-Length `{length}`")))?;
            if length > MAX_BODY {
                return Err(ClientError::Malformed(format!(
                    "a body of {length} bytes is too large"
                )));
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).map_err(|e| {
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    ClientError::Malformed(format!(
                        "the body ended before its Content-Length of {length} bytes"
                    ))
                } else {
                    ClientError::Exchange(e)
                }
            })?;
            body
        } else {
            let mut body = Vec::new();
            reader
                .take(MAX_BODY as u64 + 1)
                .read_to_end(&mut body)
                .map_err(ClientError::Exchange)?;
            if body.len() > MAX_BODY {
                return Err(ClientError::Malformed("the body is too large".into()));
            }
            body
        };
        return Ok(response);
    }
}

fn parse_status_line(line: &str) -> Result<(u16, String), ClientError> {
    let bad = || ClientError::Malformed(format!("bad status line `{}`", truncate(line, 80)));
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(bad());
    }
    let code = parts.next().ok_or_else(bad)?;
    if code.len() != 3 {
        return Err(bad());
    }
    let status: u16 = code.parse().map_err(|_| bad())?;
    if !(100..=599).contains(&status) {
        return Err(bad());
    }
    Ok((status, parts.next().unwrap_or("").trim().to_string()))
}

fn read_headers<R: BufRead>(reader: &mut R) -> Result<Vec<(String, String)>, ClientError> {
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader)?.ok_or_else(|| {
            ClientError::Malformed("the connection closed within the headers".into())
        })?;
        if line.is_empty() {
            return Ok(headers);
        }
        if headers.len() == MAX_HEADERS {
            return Err(ClientError::Malformed("too many headers".into()));
        }
        let (name, value) = line.split_once(':').ok_or_else(|| {
            ClientError::Malformed(format!("bad header line `{}`", truncate(&line, 80)))
        })?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
}

fn read_chunked<R: BufRead>(reader: &mut R) -> Result<Vec<u8>, ClientError> {
    let mut body = Vec::new();
    loop {
        let line = read_line(reader)?
            .ok_or_else(|| ClientError::Malformed("the chunked body ended early".into()))?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| {
            ClientError::Malformed(format!("bad chunk size `{}`", truncate(&line, 40)))
        })?;
        if size == 0 {
            // Trailers, up to the blank line; a peer that just closes is accepted too.
            while let Some(trailer) = read_line(reader)? {
                if trailer.is_empty() {
                    break;
                }
            }
            return Ok(body);
        }
        if body.len().saturating_add(size) > MAX_BODY {
            return Err(ClientError::Malformed("the body is too large".into()));
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..]).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                ClientError::Malformed("the chunked body ended early".into())
            } else {
                ClientError::Exchange(e)
            }
        })?;
        match read_line(reader)? {
            Some(end) if end.is_empty() => {}
            _ => {
                return Err(ClientError::Malformed(
                    "a chunk does not end with CRLF".into(),
                ))
            }
        }
    }
}

/// One line without its CRLF (or LF); None at the end of the stream.
fn read_line<R: BufRead>(reader: &mut R) -> Result<Option<String>, ClientError> {
    let mut line = Vec::new();
    let n = reader
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut line)
        .map_err(ClientError::Exchange)?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(if n > MAX_LINE {
            ClientError::Malformed("a header line is too long".into())
        } else {
            ClientError::Malformed("the connection closed within a line".into())
        });
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| ClientError::Malformed("a header line is not UTF-8".into()))
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<Response, ClientError> {
        read_response(&mut &raw[..], false)
    }

    #[test]
    fn content_length_body() {
        let r = parse(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"a\":true}\nEXTRA",
        )
        .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.reason, "OK");
        assert_eq!(r.header("Content-Type"), Some("application/json"));
        // Exactly Content-Length bytes, not what follows.
        assert_eq!(r.body, b"{\"a\":true}\n");
        assert!(!r.is_problem());
    }

    #[test]
    fn chunked_body_with_extensions_and_trailers() {
        let r = parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
              4;ext=1\r\n{\"a\"\r\nA\r\n:12345678}\r\n0\r\nX-Trailer: y\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, b"{\"a\":12345678}");
    }

    #[test]
    fn chunked_wins_over_content_length() {
        let r = parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, b"abc");
    }

    #[test]
    fn body_to_end_of_stream_and_bare_lf() {
        let r = parse(b"HTTP/1.0 500 Internal Server Error\nServer: x\n\nboom").unwrap();
        assert_eq!(r.status, 500);
        assert_eq!(r.reason, "Internal Server Error");
        assert_eq!(r.body, b"boom");
    }

    #[test]
    fn interim_responses_skipped_and_204_has_no_body() {
        let r = parse(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n").unwrap();
        assert_eq!(r.status, 204);
        assert!(r.body.is_empty());
    }

    #[test]
    fn problem_json_recognised() {
        let r = parse(
            b"HTTP/1.1 422 Unprocessable Entity\r\ncontent-type: Application/Problem+JSON; charset=utf-8\r\ncontent-length: 2\r\n\r\n{}",
        )
        .unwrap();
        assert_eq!(r.status, 422);
        assert!(r.is_problem());
    }

    #[test]
    fn malformed_answers_rejected() {
        for raw in [
            &b""[..],
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2",
        ] {
            assert!(
                matches!(parse(raw), Err(ClientError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn oversized_lines_and_bodies_rejected() {
        let mut raw = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        raw.extend(std::iter::repeat_n(b'a', MAX_LINE + 10));
        raw.extend(b"\r\n\r\n");
        assert!(matches!(parse(&raw), Err(ClientError::Malformed(m)) if m.contains("too long")));
        let raw = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        assert!(
            matches!(parse(raw.as_bytes()), Err(ClientError::Malformed(m)) if m.contains("too large"))
        );
    }

    #[test]
    fn request_head() {
        let request = Request {
            method: "POST",
            path: "/v1/acl",
            body: Some(b"{}".to_vec()),
        };
        let head = encode_request_head(&request, "127.0.0.1:9443", "/api", Some("s3cret"), Some(2));
        assert!(head.starts_with("POST /api/v1/acl HTTP/1.1\r\nHost: 127.0.0.1:9443\r\n"));
        assert!(head.contains("\r\nConnection: close\r\n"));
        assert!(head.contains("\r\nAuthorization: Bearer s3cret\r\n"));
        assert!(head.contains("\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"));
        assert!(head.ends_with("\r\n\r\n"));

        let get = Request {
            method: "GET",
            path: "/v1/status",
            body: None,
        };
        let head = encode_request_head(&get, "localhost", "", None, None);
        assert!(head.starts_with("GET /v1/status HTTP/1.1\r\nHost: localhost\r\n"));
        assert!(!head.contains("Authorization"));
        assert!(!head.contains("Content-"));
    }

    #[test]
    fn urls() {
        assert_eq!(
            Endpoint::from_url("http://127.0.0.1:9443").unwrap(),
            Endpoint::Tcp {
                address: "127.0.0.1:9443".into(),
                authority: "127.0.0.1:9443".into(),
                prefix: "".into()
            }
        );
        assert_eq!(
            Endpoint::from_url("http://[::1]:9443/").unwrap(),
            Endpoint::Tcp {
                address: "[::1]:9443".into(),
                authority: "[::1]:9443".into(),
                prefix: "".into()
            }
        );
        assert_eq!(
            Endpoint::from_url("http://throttle.internal/admin/").unwrap(),
            Endpoint::Tcp {
                address: "throttle.internal:80".into(),
                authority: "throttle.internal".into(),
                prefix: "/admin".into()
            }
        );
        assert!(Endpoint::from_url("https://h:1")
            .unwrap_err()
            .contains("https"));
        assert!(Endpoint::from_url("127.0.0.1:9443").is_err());
        assert!(Endpoint::from_url("http://h:99999").is_err());
        assert!(Endpoint::from_url("http://").is_err());
        assert!(Endpoint::from_url("http://u:p@h:1").is_err());
    }

    #[test]
    fn tcp_round_trip_with_token() {
        use std::net::TcpListener;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream);
            let mut head = String::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            reader
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .unwrap();
            head
        });
        let client = Client::new(
            Endpoint::from_url(&format!("http://127.0.0.1:{port}")).unwrap(),
            Some("tok".into()),
        );
        let response = client
            .send(&Request {
                method: "GET",
                path: "/v1/status",
                body: None,
            })
            .unwrap();
        assert_eq!(response.body, b"ok");
        let head = server.join().unwrap();
        assert!(head.starts_with("GET /v1/status HTTP/1.1\r\n"));
        assert!(head.contains(&format!("Host: 127.0.0.1:{port}\r\n")));
        assert!(head.contains("Authorization: Bearer tok\r\n"));
    }

    #[test]
    fn read_timeout_is_reported() {
        let dir = crate::cli::tests::temp_dir("timeout");
        let path = dir.join("s.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            // Accept and say nothing until the client gives up.
            let (mut stream, _) = listener.accept().unwrap();
            let mut sink = Vec::new();
            let _ = stream.read_to_end(&mut sink);
        });
        let mut client = Client::new(Endpoint::Unix(path), None);
        client.timeout = Duration::from_millis(200);
        let error = client
            .send(&Request {
                method: "GET",
                path: "/v1/status",
                body: None,
            })
            .unwrap_err();
        assert!(
            matches!(&error, ClientError::Exchange(e) if is_timeout(e)),
            "{error:?}"
        );
        assert!(error.to_string().contains("did not answer"));
        drop(client);
        server.join().unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }
}
