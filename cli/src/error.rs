//! The CLI's one error type: why a command could not do its job, and the
//! exit code that says so (docs: 1 tampered or refused, 2 usage or I/O).
//! Parsers keep plain `String` messages for what they report as problems
//! of a file; a command's failure is always an `Error`.

use std::fmt;
use std::path::PathBuf;

#[derive(Debug)]
pub enum Error {
    /// The log, a checkpoint or a signature does not hold: exit 1.
    Refused(String),
    /// Usage, input that is not what the command reads, or the database
    /// could not be reached or queried: exit 2.
    Trouble(String),
    /// A file could not be read or written: exit 2.
    Io(PathBuf, std::io::Error),
}

impl Error {
    pub fn trouble(message: impl Into<String>) -> Error {
        Error::Trouble(message.into())
    }

    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Refused(_) => 1,
            Error::Trouble(_) | Error::Io(..) => 2,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Refused(m) | Error::Trouble(m) => f.write_str(m),
            Error::Io(p, e) => write!(f, "{}: {e}", p.display()),
        }
    }
}

impl std::error::Error for Error {}

/// What a database error says: the server's own message, SQLSTATE and hint
/// (`Display` of the client library's error says only "db error").
pub fn db_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.hint() {
            Some(h) => format!("{} ({}; {h})", db.message(), db.code().code()),
            None => format!("{} ({})", db.message(), db.code().code()),
        },
        // Not from the server (a refused connection, a lost one): the
        // client's error and its cause.
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

/// A helper's message (a connection, a key file, a query) is trouble.
impl From<String> for Error {
    fn from(message: String) -> Error {
        Error::Trouble(message)
    }
}
