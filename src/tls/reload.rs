//! Reloading certificates and credentials when their files change, without
//! touching open connections: a reload builds new material and publishes it;
//! new handshakes (and new kubelet connections) pick it up, old ones keep
//! theirs. A file that fails to load is logged and counted, and the last
//! good material stays in use.
//!
//! Kubernetes updates a mounted Secret by swapping a `..data` symlink in the
//! mount directory, so the *directories* are watched (inotify, via notify),
//! and every file is re-checked periodically as well in case an event is
//! missed. Nothing is reloaded unless the files' contents changed.

use std::collections::BTreeSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::drain::Drain;
use crate::metrics::Metrics;

/// Loads a piece of material from its files and publishes it.
pub type Load = Box<dyn Fn() -> Result<(), String> + Send>;

/// One set of files that is loaded together (a certificate and its key, say).
pub struct Material {
    name: &'static str,
    paths: Vec<PathBuf>,
    load: Load,
    fingerprint: u64,
}

impl Material {
    /// `load` must already have run once successfully (at start-up): the
    /// files as they are now are the baseline.
    pub fn new(name: &'static str, paths: Vec<PathBuf>, load: Load) -> Self {
        let fingerprint = fingerprint(&paths);
        Material {
            name,
            paths,
            load,
            fingerprint,
        }
    }

    /// Reloads if the files changed since the last look.
    fn check(&mut self, metrics: &Metrics) {
        let now = fingerprint(&self.paths);
        if now == self.fingerprint {
            return;
        }
        // Remember even a broken version, so it is reported once, not on
        // every later check.
        self.fingerprint = now;
        match (self.load)() {
            Ok(()) => {
                tracing::info!(material = self.name, "reloaded");
                metrics.reloaded(self.name, true);
            }
            Err(error) => {
                tracing::error!(material = self.name, %error, "reload failed; keeping the previous one");
                metrics.reloaded(self.name, false);
            }
        }
    }
}

/// Contents of every file (or the error reading it), hashed.
fn fingerprint(paths: &[PathBuf]) -> u64 {
    let mut hasher = DefaultHasher::new();
    for path in paths {
        match std::fs::read(path) {
            Ok(bytes) => bytes.hash(&mut hasher),
            Err(error) => error.kind().to_string().hash(&mut hasher),
        }
    }
    hasher.finish()
}

/// Watches and reloads until the gateway has stopped.
pub async fn watch(
    mut materials: Vec<Material>,
    metrics: Arc<Metrics>,
    resync: Duration,
    drain: Drain,
) {
    if materials.is_empty() {
        return;
    }
    let (changed, mut changes) = mpsc::channel::<()>(1);
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Reading the files to fingerprint them raises access events.
        if event.is_ok_and(|e| !matches!(e.kind, EventKind::Access(_))) {
            let _ = changed.try_send(());
        }
    });
    let directories: BTreeSet<PathBuf> = materials
        .iter()
        .flat_map(|m| &m.paths)
        .filter_map(|p| {
            p.parent().map(|d| {
                if d.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    d.to_owned()
                }
            })
        })
        .collect();
    let _watcher = match watcher {
        Ok(mut watcher) => {
            for directory in &directories {
                if let Err(error) = watcher.watch(directory, RecursiveMode::NonRecursive) {
                    tracing::warn!(directory = %directory.display(), %error, "cannot watch; relying on the periodic check");
                }
            }
            Some(watcher)
        }
        Err(error) => {
            tracing::warn!(%error, "file watching unavailable; relying on the periodic check");
            None
        }
    };

    // Files that changed between the start-up load and the watch being set
    // up raised no event: look once now.
    for material in &mut materials {
        material.check(&metrics);
    }

    let mut resync = tokio::time::interval(resync);
    resync.tick().await;
    loop {
        tokio::select! {
            () = drain.stopped() => return,
            _ = changes.recv() => {
                // A Secret update touches several files; let it settle.
                tokio::time::sleep(Duration::from_millis(100)).await;
                while changes.try_recv().is_ok() {}
            }
            _ = resync.tick() => {}
        }
        for material in &mut materials {
            material.check(&metrics);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[tokio::test]
    async fn reloads_on_change_and_keeps_going_after_a_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "one").unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let path = file.clone();
        let material = Material::new(
            "upstream_token",
            vec![file.clone()],
            Box::new(move || {
                let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
                if text.is_empty() {
                    return Err("empty".into());
                }
                sink.lock().unwrap().push(text);
                Ok(())
            }),
        );
        let metrics = Arc::new(Metrics::new());
        let drain = Drain::new();
        let task = tokio::spawn(watch(
            vec![material],
            metrics.clone(),
            Duration::from_secs(3600),
            drain.clone(),
        ));

        let wait_for = |n: usize| {
            let seen = seen.clone();
            async move {
                for _ in 0..100 {
                    if seen.lock().unwrap().len() >= n {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                panic!("no reload");
            }
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        std::fs::write(&file, "two").unwrap();
        wait_for(1).await;
        std::fs::write(&file, "").unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        std::fs::write(&file, "three").unwrap();
        wait_for(2).await;

        assert_eq!(*seen.lock().unwrap(), ["two", "three"]);
        let text = metrics.encode();
        assert!(
            text.contains(r#"material="upstream_token",result="success"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"material="upstream_token",result="failure"} 1"#),
            "{text}"
        );
        drain.stop();
        task.await.unwrap();
    }
}
