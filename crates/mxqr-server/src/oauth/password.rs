//! Argon2id password hashes (PHC strings) and Matrix localpart rules.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, mpsc};

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;

use crate::sync::lock;

/// Shortest password accepted when an account is created or registered.
pub const MIN_PASSWORD_LEN: usize = 8;

/// Why a password could not be hashed.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// Argon2 refused the input or parameters.
    #[error("password hashing failed: {0}")]
    Argon2(argon2::password_hash::Error),
    /// The worker thread hashing it failed.
    #[error("password hashing was interrupted: {0}")]
    Worker(#[from] WorkerError),
}

/// Argon2id hash of `password` with a fresh 128-bit salt and the crate's default parameters
/// (19 MiB, 2 passes: OWASP's minimum for argon2id), as a PHC string. Blocking; the server
/// uses [`hash_bounded`].
pub fn hash(password: &str) -> Result<String, HashError> {
    let salt_bytes = rand::random::<[u8; 16]>();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(HashError::Argon2)?;
    let params = Params::default();
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    argon2_into(&argon2, &params, password.as_bytes(), &salt_bytes, &mut out)
        .map_err(|e| HashError::Argon2(e.into()))?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(HashError::Argon2)?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(HashError::Argon2)?),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches the PHC string `stored` (any Argon2 variant, version and
/// parameters it names; the comparison is constant-time). Blocking; the server uses
/// [`verify_bounded`].
pub fn verify(password: &str, stored: &str) -> bool {
    verify_phc(password, stored).unwrap_or(false)
}

/// [`verify`]; `None` when `stored` is not a PHC string Argon2 can check against.
fn verify_phc(password: &str, stored: &str) -> Option<bool> {
    let parsed = PasswordHash::new(stored).ok()?;
    let (salt, expected) = (parsed.salt?, parsed.hash?);
    let algorithm = Algorithm::try_from(parsed.algorithm).ok()?;
    let version = parsed.version.map(Version::try_from).transpose().ok()?;
    let params = Params::try_from(&parsed).ok()?;
    let mut salt_buf = [0u8; 64];
    let salt = salt.decode_b64(&mut salt_buf).ok()?;
    let argon2 = Argon2::new(algorithm, version.unwrap_or_default(), params.clone());
    let mut out = vec![0u8; expected.len()];
    argon2_into(&argon2, &params, password.as_bytes(), salt, &mut out).ok()?;
    Some(bool::from(out.ct_eq(expected.as_bytes())))
}

std::thread_local! {
    /// Argon2's working memory, kept per thread and reused: allocating and freeing 19 MiB per
    /// computation made the allocator keep a fresh copy in another arena each time (RSS grew
    /// by 19 MiB per sign-in attempt up to one copy per arena).
    static MEMORY: std::cell::RefCell<Vec<Block>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `argon2` over `password` and `salt` into `out`, in this thread's reused memory.
fn argon2_into(
    argon2: &Argon2<'_>,
    params: &Params,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> Result<(), argon2::Error> {
    MEMORY.with_borrow_mut(|blocks| {
        if blocks.len() < params.block_count() {
            blocks.resize(params.block_count(), Block::default());
        }
        argon2.hash_password_into_with_memory(password, salt, out, &mut blocks[..])
    })
}

/// Work for the Argon2 threads.
type Job = Box<dyn FnOnce() + Send>;

/// Argon2 computations run on one thread per core, for the whole process, in arrival order:
/// each takes 19 MiB and a core for tens of milliseconds, so more at once would only add
/// memory, not throughput. Fixed threads (not the blocking pool's changing ones) also keep
/// what the allocator retains after a computation to one buffer per thread.
static ARGON2_QUEUE: LazyLock<Option<mpsc::Sender<Job>>> = LazyLock::new(|| {
    let (sender, receiver) = mpsc::channel::<Job>();
    let receiver = Arc::new(Mutex::new(receiver));
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let mut started = 0;
    for i in 0..threads {
        let receiver = Arc::clone(&receiver);
        let spawned = std::thread::Builder::new()
            .name(format!("argon2-{i}"))
            .spawn(move || {
                loop {
                    // The lock is held while waiting for a job, not while running it.
                    let Ok(job) = lock(&receiver).recv() else {
                        return;
                    };
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            });
        match spawned {
            Ok(_) => started += 1,
            Err(err) => tracing::error!(%err, "could not start an Argon2 thread"),
        }
    }
    (started > 0).then_some(sender)
});

/// Argon2 computations running now, counted on the worker threads themselves.
static ARGON2_RUNNING: AtomicUsize = AtomicUsize::new(0);

/// Why Argon2 work did not come back.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// No Argon2 thread could be started.
    #[error("no password worker thread is running")]
    NoWorkers,
    /// The computation failed (panicked) before answering.
    #[error("the password worker failed: {0}")]
    Failed(#[from] oneshot::error::RecvError),
}

/// Runs `work` on one of the Argon2 threads, waiting for its turn. Work whose caller has gone
/// (a dropped request) by its turn is skipped, so abandoned requests cannot pile up work.
async fn bounded<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, WorkerError> {
    let queue = ARGON2_QUEUE.as_ref().ok_or(WorkerError::NoWorkers)?;
    let (answer, result) = oneshot::channel();
    let job: Job = Box::new(move || {
        if answer.is_closed() {
            return;
        }
        ARGON2_RUNNING.fetch_add(1, Ordering::SeqCst);
        let value = work();
        ARGON2_RUNNING.fetch_sub(1, Ordering::SeqCst);
        let _ = answer.send(value);
    });
    queue.send(job).map_err(|_| WorkerError::NoWorkers)?;
    Ok(result.await?)
}

/// Argon2 computations running now in this process.
#[cfg(test)]
fn argon2_running() -> usize {
    ARGON2_RUNNING.load(Ordering::SeqCst)
}

/// [`hash`] within the process-wide bound on Argon2 work.
pub async fn hash_bounded(password: String) -> Result<String, HashError> {
    bounded(move || hash(&password)).await?
}

/// [`verify`] within the process-wide bound on Argon2 work; `stored` `None` (no such user)
/// is checked against [`dummy_hash`], so the time does not tell which usernames exist.
pub async fn verify_bounded(password: String, stored: Option<String>) -> bool {
    bounded(move || verify(&password, stored.as_deref().unwrap_or_else(|| dummy_hash())))
        .await
        .unwrap_or_else(|err| {
            tracing::error!(%err, "password verification failed");
            false
        })
}

/// A hash of a random password, verified against when the user does not exist so that the
/// response time does not reveal which usernames exist.
pub fn dummy_hash() -> &'static str {
    static DUMMY: LazyLock<String> =
        LazyLock::new(|| hash(&hex::encode(rand::random::<[u8; 16]>())).unwrap_or_default());
    &DUMMY
}

/// Matrix user ID grammar for new localparts: `[a-z0-9._=/+-]`, 1–255 bytes.
pub fn valid_localpart(localpart: &str) -> bool {
    !localpart.is_empty()
        && localpart.len() <= 255
        && localpart
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._=-/+".contains(&b))
}

/// `alice`, `@alice` or `@alice:server` → `alice` (for the sign-in form).
pub fn localpart_of(input: &str, server_name: &str) -> String {
    let trimmed = input.trim();
    let without_at = trimmed.strip_prefix('@').unwrap_or(trimmed);
    let local = match without_at.rsplit_once(':') {
        Some((local, server)) if server == server_name || without_at.len() != trimmed.len() => {
            local
        }
        _ => without_at,
    };
    local.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify("correct horse", &h));
        assert!(!verify("wrong horse", &h));
        assert!(!verify("x", "not a phc string"));
    }

    #[test]
    fn hashes_match_the_crate_s_own_phc_strings() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let ours = hash("correct horse").unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"correct horse", &parsed)
                .is_ok()
        );
        let salt = SaltString::encode_b64(&[7; 16]).unwrap();
        let theirs = Argon2::default()
            .hash_password(b"correct horse", &salt)
            .unwrap()
            .to_string();
        assert!(verify("correct horse", &theirs));
        assert!(!verify("correct horse!", &theirs));
        // Other variants and parameters stored earlier keep working.
        let argon2i = Argon2::new(
            Algorithm::Argon2i,
            Version::V0x10,
            Params::new(8, 1, 1, Some(20)).unwrap(),
        )
        .hash_password(b"pw", &salt)
        .unwrap()
        .to_string();
        assert!(verify("pw", &argon2i));
        assert!(!verify("pw2", &argon2i));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn argon2_work_is_bounded_per_process() {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let stored = hash("correct horse").unwrap();
        let checks: Vec<_> = (0..cores * 4 + 4)
            .map(|i| tokio::spawn(verify_bounded(format!("wrong {i}"), Some(stored.clone()))))
            .collect();
        let mut peak = 0;
        while checks.iter().any(|c| !c.is_finished()) {
            peak = peak.max(argon2_running());
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        assert!(
            peak >= 1 && peak <= cores,
            "{peak} Argon2 runs at once on {cores} cores"
        );
        for check in checks {
            assert!(!check.await.unwrap());
        }
        assert!(verify_bounded("correct horse".into(), Some(stored)).await);
        assert!(!verify_bounded("x".into(), None).await);
        assert!(verify("p", &hash_bounded("p".into()).await.unwrap()));
    }

    #[test]
    fn localparts() {
        assert!(valid_localpart("alice.b-c_d=e/f+g"));
        assert!(!valid_localpart("Alice"));
        assert!(!valid_localpart(""));
        assert!(!valid_localpart("a b"));
        assert_eq!(localpart_of("@alice:example.org", "example.org"), "alice");
        assert_eq!(localpart_of(" Alice ", "example.org"), "alice");
    }
}
