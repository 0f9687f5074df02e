//! Resolver placeholder for matrix-sdk-sqlite (see Cargo.toml): compiling it means a matrix-sdk
//! SQLite store was switched on, which this workspace cannot link next to sqlx.
compile_error!("matrix-sdk's `sqlite` feature is not usable in this workspace: libsqlite3-sys clashes with sqlx");
