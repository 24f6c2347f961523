//! The CPU latency request a profile holds while in force (`[cpu] max_latency_us`): the
//! value written to `/dev/cpu_dma_latency` on a descriptor kept open, as tuned's
//! `force_latency` does. The kernel drops the request when the descriptor closes, so
//! there is nothing to journal: a revert closes it, and a killed daemon's request goes with
//! it (a restart with `on_start = "reapply"` makes it again).

use std::io::{Read, Write};

use cleanroom_proto::{KnobResult, KnobStatus};

use super::Pinner;
use crate::host::Host;

const DEVICE: &str = "/dev/cpu_dma_latency";
const KNOB: &str = "cpu latency request (held open)";

fn item(
    status: KnobStatus,
    before: Option<String>,
    after: Option<String>,
    reason: Option<String>,
) -> KnobResult {
    KnobResult {
        knob: KNOB.into(),
        path: DEVICE.into(),
        before,
        after,
        status,
        reason,
    }
}

/// The limit in force on the host now (the strictest of every request), in µs.
fn effective(host: &Host) -> Option<String> {
    let mut f = std::fs::File::open(host.path(DEVICE).ok()?).ok()?;
    let mut b = [0u8; 4];
    f.read_exact(&mut b).ok()?;
    Some(i32::from_ne_bytes(b).to_string())
}

impl Pinner {
    /// Holds a request for `want` µs (or drops the one held, with `None`); the item to
    /// report, or none when nothing was or is to be held.
    pub fn hold_latency(&self, host: &Host, want: Option<u32>) -> Option<KnobResult> {
        let mut inner = self.lock();
        let held = inner.latency.as_ref().map(|(n, _)| *n);
        if held == want {
            return want.map(|n| {
                let now = effective(host);
                item(KnobStatus::Unchanged, Some(n.to_string()), now, None)
            });
        }
        let before = effective(host);
        let Some(n) = want else {
            inner.latency = None;
            return Some(item(KnobStatus::Restored, before, effective(host), None));
        };
        let opened = host.path(DEVICE).map_err(|e| e.to_string()).and_then(|p| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .map_err(|e| format!("cannot open {}: {e}", p.display()))
        });
        let mut file = match opened {
            Ok(f) => f,
            Err(e) => {
                inner.latency = None;
                return Some(item(KnobStatus::Unsupported, before, None, Some(e)));
            }
        };
        let value = i32::try_from(n).unwrap_or(i32::MAX);
        if let Err(e) = file.write_all(&value.to_ne_bytes()) {
            inner.latency = None;
            return Some(item(
                KnobStatus::Failed,
                before,
                None,
                Some(format!("cannot write {n} to {DEVICE}: {e}")),
            ));
        }
        // The old request (if any) goes once the new one is in place.
        inner.latency = Some((n, file));
        Some(item(KnobStatus::Applied, before, effective(host), None))
    }

    /// Verify: while the profile wants a limit, the request is held and the host's limit
    /// is within it.
    pub fn verify_latency(&self, host: &Host, want: Option<u32>) -> Option<KnobResult> {
        let n = want?;
        let held = self.lock().latency.as_ref().map(|(h, _)| *h);
        let Some(now) = effective(host) else {
            let why = format!("{DEVICE} cannot be read here");
            return Some(item(KnobStatus::Unsupported, None, None, Some(why)));
        };
        let within = now.parse::<i64>().is_ok_and(|v| v <= i64::from(n));
        Some(if held == Some(n) && within {
            item(KnobStatus::Ok, Some(n.to_string()), Some(now), None)
        } else {
            let why = "the latency request is not held".to_owned();
            item(
                KnobStatus::Drifted,
                Some(n.to_string()),
                Some(now),
                Some(why),
            )
        })
    }
}
