//! The storage back end a test server runs on.

/// Where a test server keeps its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// One instance's own stores: accounts in a SQLite file in a temporary directory,
    /// rendezvous sessions in memory (what `mxqr serve` uses without a database URL).
    Sqlite,
    /// A fresh database of its own on the PostgreSQL test server ([`crate::pg`]), for
    /// accounts and rendezvous sessions alike.
    Postgres,
}

impl Backend {
    /// Both back ends, for a test that loops over them.
    pub const ALL: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];
}

/// Runs each listed scenario, an `async fn(Backend)` of the calling module, once per back end:
/// as the tests `sqlite::NAME` and `pg::NAME`.
///
/// A scenario is a `#[tokio::test]` unless attributes precede its name, which then replace
/// that one (e.g. `#[tokio::test(flavor = "multi_thread", worker_threads = 2)] NAME`). A
/// scenario left out of the list is never run, and the compiler reports it as dead code.
#[macro_export]
macro_rules! backend_tests {
    ($($(#[$attr:meta])* $name:ident),* $(,)?) => {
        /// The scenarios on SQLite.
        mod sqlite {
            $( $crate::backend_tests!(@test [$(#[$attr])*] $name, Sqlite); )*
        }
        /// The scenarios on PostgreSQL.
        mod pg {
            $( $crate::backend_tests!(@test [$(#[$attr])*] $name, Postgres); )*
        }
    };
    (@test [] $name:ident, $backend:ident) => {
        #[tokio::test]
        async fn $name() {
            super::$name($crate::Backend::$backend).await
        }
    };
    (@test [$(#[$attr:meta])+] $name:ident, $backend:ident) => {
        $(#[$attr])+
        async fn $name() {
            super::$name($crate::Backend::$backend).await
        }
    };
}
