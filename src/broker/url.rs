//! `BROKER_URL` / `BROKER_USE_SSL` as the Python worker (kombu) reads them.
//!
//! * Schemes `pyamqp://`, `amqp://` and `amqps://`.
//! * The virtual host is the URL path after the first `/`, URL-decoded;
//!   `host:5672/` and `host:5672//` both mean vhost `/` (custom Codabench
//!   queues use a UUID vhost: `host:5672/<uuid>`).
//! * An explicit port is always used; otherwise 5671 with TLS, else 5672.
//! * TLS is on for `amqps://` and whenever `BROKER_USE_SSL` is non-empty
//!   (even `"False"`, as in the Python worker), on whatever port the URL
//!   says: codabench.org serves TLS on 5672. Like the Python worker, the
//!   server certificate is not verified unless asked for
//!   ([`TlsMode::Verify`]).

use std::fmt;

use percent_encoding::percent_decode_str;

/// How to secure the AMQP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain TCP.
    Off,
    /// TLS without certificate verification (Python worker behaviour).
    NoVerify,
    /// TLS, verifying the server against the system's root certificates.
    Verify,
}

/// A parsed broker URL.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
    pub username: String,
    pub password: String,
    pub vhost: String,
    pub tls: TlsMode,
}

impl fmt::Debug for BrokerUrl {
    // Never print the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerUrl")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("vhost", &self.vhost)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for BrokerUrl {
    /// `amqp[s]://user@host:port/vhost`, without the password, for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls == TlsMode::Off {
            "amqp"
        } else {
            "amqps"
        };
        write!(
            f,
            "{scheme}://{}@{}:{}/{}",
            self.username, self.host, self.port, self.vhost
        )
    }
}

/// A `BROKER_URL` that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BrokerUrlError {
    #[error("BROKER_URL is not a URL ({0}); expected pyamqp://user:password@host:port/vhost")]
    Syntax(#[from] url::ParseError),
    #[error("BROKER_URL scheme `{0}` is not supported; use pyamqp://, amqp:// or amqps://")]
    Scheme(String),
    #[error("BROKER_URL has no host; expected pyamqp://user:password@host:port/vhost")]
    NoHost,
    #[error("BROKER_URL part `{0}` is not valid UTF-8 after URL-decoding")]
    Encoding(&'static str),
}

fn decode(s: &str, what: &'static str) -> Result<String, BrokerUrlError> {
    percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| BrokerUrlError::Encoding(what))
}

/// Whether `BROKER_USE_SSL` turns TLS on: any non-empty value does, as in
/// the Python worker (`if os.environ.get('BROKER_USE_SSL', False)`).
pub fn use_ssl_from_env(value: Option<&str>) -> bool {
    value.is_some_and(|v| !v.is_empty())
}

impl BrokerUrl {
    /// Parse a broker URL. `use_ssl` is the `BROKER_USE_SSL` decision (see
    /// [`use_ssl_from_env`]); `verify` asks for certificate verification
    /// when TLS is on.
    pub fn parse(raw: &str, use_ssl: bool, verify: bool) -> Result<Self, BrokerUrlError> {
        let u = url::Url::parse(raw.trim())?;
        let scheme_tls = match u.scheme() {
            "pyamqp" | "amqp" | "py-amqp" => false,
            "amqps" => true,
            other => return Err(BrokerUrlError::Scheme(other.to_string())),
        };
        let tls = match (scheme_tls || use_ssl, verify) {
            (false, _) => TlsMode::Off,
            (true, false) => TlsMode::NoVerify,
            (true, true) => TlsMode::Verify,
        };
        let host = u
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or(BrokerUrlError::NoHost)?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = u
            .port()
            .unwrap_or(if tls == TlsMode::Off { 5672 } else { 5671 });
        let username = match u.username() {
            "" => "guest".to_string(),
            name => decode(name, "username")?,
        };
        let password = match u.password() {
            None => "guest".to_string(),
            Some(p) => decode(p, "password")?,
        };
        // kombu: vhost = path[1:] URL-decoded, empty → "/".
        let path = u.path();
        let rest = path.strip_prefix('/').unwrap_or(path);
        let vhost = match decode(rest, "virtual host")? {
            v if v.is_empty() => "/".to_string(),
            v => v,
        };
        Ok(BrokerUrl {
            host,
            port,
            username,
            password,
            vhost,
            tls,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> BrokerUrl {
        BrokerUrl::parse(s, false, false).unwrap()
    }

    #[test]
    fn vhost_slash_forms() {
        assert_eq!(p("pyamqp://u:p@h:5672/").vhost, "/");
        assert_eq!(p("pyamqp://u:p@h:5672//").vhost, "/");
        assert_eq!(p("pyamqp://u:p@h:5672").vhost, "/");
        assert_eq!(p("amqp://u:p@h/%2f").vhost, "/");
        assert_eq!(
            p("pyamqp://u:p@h:5672/5d1c6f3e-0000-4000-8000-000000000001").vhost,
            "5d1c6f3e-0000-4000-8000-000000000001"
        );
        assert_eq!(p("amqp://h/my%20vhost").vhost, "my vhost");
    }

    #[test]
    fn ports_and_tls() {
        assert_eq!(p("pyamqp://u:p@h/").port, 5672);
        assert_eq!(p("amqps://u:p@h/").port, 5671);
        assert_eq!(p("amqps://u:p@h/").tls, TlsMode::NoVerify);
        // codabench.org: TLS on 5672 via BROKER_USE_SSL.
        let u = BrokerUrl::parse("pyamqp://u:p@www.codabench.org:5672/", true, false).unwrap();
        assert_eq!((u.port, u.tls), (5672, TlsMode::NoVerify));
        let u = BrokerUrl::parse("pyamqp://u:p@h/", true, true).unwrap();
        assert_eq!((u.port, u.tls), (5671, TlsMode::Verify));
        assert_eq!(p("amqp://u:p@h:1234/").tls, TlsMode::Off);
    }

    #[test]
    fn credentials_are_decoded_and_never_printed() {
        let u = p("pyamqp://us%40er:p%2Fw%3Ad@[::1]:5673/v");
        assert_eq!(u.username, "us@er");
        assert_eq!(u.password, "p/w:d");
        assert_eq!(u.host, "::1");
        assert!(!format!("{u:?}{u}").contains("p/w:d"));
        let d = p("amqp://localhost");
        assert_eq!(
            (d.username.as_str(), d.password.as_str()),
            ("guest", "guest")
        );
    }

    #[test]
    fn bad_urls() {
        assert!(matches!(
            BrokerUrl::parse("redis://h/0", false, false),
            Err(BrokerUrlError::Scheme(_))
        ));
        assert!(BrokerUrl::parse("not a url", false, false).is_err());
        assert!(use_ssl_from_env(Some("False")));
        assert!(!use_ssl_from_env(Some("")));
        assert!(!use_ssl_from_env(None));
    }
}
