//! Unit properties through systemd's D-Bus API (`org.freedesktop.systemd1`): reading a
//! unit's `AllowedCPUs=` and `AllowedMemoryNodes=`, and setting them at runtime
//! (`SetUnitProperties` with `runtime = true`: they last until the next boot and outlive a
//! restart of the unit, as `systemctl set-property --runtime` does).
//!
//! Calls block: they run on the tuning operations' thread. Inside the daemon's runtime they
//! run on it (`Handle::block_on` from a blocking thread); before it exists (start-up) on a
//! current-thread runtime of their own, which leaves no thread behind.

use std::collections::BTreeSet;

use zbus::zvariant::{OwnedObjectPath, Value};

/// Why a unit property could not be read or set.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not a systemd host (no `/run/systemd/system`), or no system bus.
    #[error("{0}")]
    Unavailable(String),
    /// systemd answered with an error (the message names the unit).
    #[error("systemd: {0}")]
    Call(String),
}

/// A unit property that holds a set of CPUs or memory nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetProperty {
    /// `AllowedCPUs=`.
    Cpus,
    /// `AllowedMemoryNodes=`.
    Mems,
}

impl SetProperty {
    /// Its name on the bus and in unit files.
    pub const fn name(self) -> &'static str {
        match self {
            SetProperty::Cpus => "AllowedCPUs",
            SetProperty::Mems => "AllowedMemoryNodes",
        }
    }
}

/// Whether this host runs systemd as its service manager (what `sd_booted` checks).
pub fn booted(host: &crate::host::Host) -> bool {
    host.exists("/run/systemd/system")
}

/// The D-Bus interface holding a unit's resource properties, by its type.
fn interface(unit: &str) -> Result<&'static str, Error> {
    match unit.rsplit_once('.').map(|(_, t)| t) {
        Some("service") => Ok("org.freedesktop.systemd1.Service"),
        Some("scope") => Ok("org.freedesktop.systemd1.Scope"),
        Some("slice") => Ok("org.freedesktop.systemd1.Slice"),
        Some("socket") => Ok("org.freedesktop.systemd1.Socket"),
        Some("mount") => Ok("org.freedesktop.systemd1.Mount"),
        Some("swap") => Ok("org.freedesktop.systemd1.Swap"),
        _ => Err(Error::Call(format!(
            "{unit}: only service, scope, slice, socket, mount and swap units have CPUs"
        ))),
    }
}

/// Runs `f` to completion on the daemon's runtime, or on one of its own before there is one.
fn block_on<T>(f: impl std::future::Future<Output = Result<T, Error>>) -> Result<T, Error> {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => handle.block_on(f),
        Err(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Unavailable(format!("cannot start a D-Bus client: {e}")))?
            .block_on(f),
    }
}

fn call_err(unit: &str) -> impl Fn(zbus::Error) -> Error + '_ {
    move |e| Error::Call(format!("{unit}: {e}"))
}

async fn manager(conn: &zbus::Connection) -> Result<zbus::Proxy<'_>, Error> {
    zbus::Proxy::new(
        conn,
        "org.freedesktop.systemd1",
        "/org/freedesktop/systemd1",
        "org.freedesktop.systemd1.Manager",
    )
    .await
    .map_err(|e| Error::Unavailable(format!("systemd's manager object: {e}")))
}

async fn system_bus() -> Result<zbus::Connection, Error> {
    zbus::Connection::system()
        .await
        .map_err(|e| Error::Unavailable(format!("cannot connect to the system bus: {e}")))
}

/// The value of a CPU or memory-node property of `unit` (an empty set: not restricted).
/// The unit is loaded if it is not (a unit that does not exist is an error naming it).
pub fn get(unit: &str, property: SetProperty) -> Result<BTreeSet<u32>, Error> {
    let iface = interface(unit)?;
    block_on(async {
        let conn = system_bus().await?;
        let path: OwnedObjectPath = manager(&conn)
            .await?
            .call("LoadUnit", &(unit,))
            .await
            .map_err(call_err(unit))?;
        let proxy = zbus::Proxy::new(&conn, "org.freedesktop.systemd1", path, iface)
            .await
            .map_err(call_err(unit))?;
        let load: String = zbus::Proxy::new(
            &conn,
            "org.freedesktop.systemd1",
            proxy.path().to_owned(),
            "org.freedesktop.systemd1.Unit",
        )
        .await
        .map_err(call_err(unit))?
        .get_property("LoadState")
        .await
        .map_err(call_err(unit))?;
        if load == "not-found" {
            return Err(Error::Call(format!("no unit {unit}")));
        }
        let bytes: Vec<u8> = proxy
            .get_property(property.name())
            .await
            .map_err(call_err(unit))?;
        Ok(from_mask(&bytes))
    })
}

/// Sets a CPU or memory-node property of `unit` at runtime (an empty set lifts the
/// restriction). Returns the unit's cgroup (`ControlGroup`, relative to the cgroup2
/// mount), empty when it has none.
pub fn set(unit: &str, property: SetProperty, value: &BTreeSet<u32>) -> Result<String, Error> {
    let iface = interface(unit)?;
    block_on(async {
        let conn = system_bus().await?;
        let props: Vec<(&str, Value<'_>)> = vec![(property.name(), Value::from(to_mask(value)))];
        let manager = manager(&conn).await?;
        let () = manager
            .call("SetUnitProperties", &(unit, true, props))
            .await
            .map_err(call_err(unit))?;
        let path: OwnedObjectPath = manager
            .call("LoadUnit", &(unit,))
            .await
            .map_err(call_err(unit))?;
        let group: String = zbus::Proxy::new(&conn, "org.freedesktop.systemd1", path, iface)
            .await
            .map_err(call_err(unit))?
            .get_property("ControlGroup")
            .await
            .map_err(call_err(unit))?;
        Ok(group)
    })
}

/// A unit property as a journal key: `unit:NAME/PROPERTY`.
pub fn key(unit: &str, property: SetProperty) -> String {
    format!("{KEY}{unit}/{}", property.name())
}

/// Keys of unit properties start with this.
const KEY: &str = "unit:";

/// The unit and property a key names, if it names one.
pub fn parse_key(key: &str) -> Option<(&str, SetProperty)> {
    let (unit, property) = key.strip_prefix(KEY)?.rsplit_once('/')?;
    let property = [SetProperty::Cpus, SetProperty::Mems]
        .into_iter()
        .find(|p| p.name() == property)?;
    Some((unit, property))
}

/// What a unit property holds, as a list (`None`: the unit does not exist).
pub fn read_list(unit: &str, property: SetProperty) -> Result<Option<String>, Error> {
    match get(unit, property) {
        Ok(set) => Ok(Some(crate::host::format::format_cpu_list(&set))),
        Err(Error::Call(e)) if e.starts_with("no unit") => Ok(None),
        Err(e) => Err(e),
    }
}

/// Sets a unit property to a list (empty: no restriction). systemd (252) takes an
/// emptied property but leaves the unit cgroup's cpuset file as the last value made it,
/// and the kernel refuses to empty that file while tasks are inside (`ENOSPC`): so the
/// file then gets every online CPU (or memory node), which leaves the cgroup what its
/// parent gives it, as "none of its own" does.
pub fn write_list(
    host: &crate::host::Host,
    unit: &str,
    property: SetProperty,
    list: &str,
) -> Result<(), Error> {
    let set = crate::host::format::parse_cpu_list(list)
        .map_err(|e| Error::Call(format!("{unit}: {e}")))?;
    let group = self::set(unit, property, &set)?;
    if !set.is_empty() || group.is_empty() {
        return Ok(());
    }
    let (file, all) = match property {
        SetProperty::Cpus => ("cpuset.cpus", "/sys/devices/system/cpu/online"),
        SetProperty::Mems => ("cpuset.mems", "/sys/devices/system/node/online"),
    };
    let unified = host
        .cgroup_mounts()
        .ok()
        .and_then(|m| m.into_iter().find(|m| m.unified));
    let Some(m) = unified else {
        return Ok(());
    };
    let path = format!("{}{group}/{file}", m.mount_point.display());
    let all = host
        .read(all)
        .map_or_else(|_| "0".to_owned(), |t| t.trim().to_owned());
    if host.exists(&path) {
        host.write(&path, &all)
            .map_err(|e| Error::Call(format!("{unit}: {e}")))?;
    }
    Ok(())
}

/// A set from systemd's byte mask (bit `j` of byte `i` is member `8i + j`).
fn from_mask(bytes: &[u8]) -> BTreeSet<u32> {
    bytes
        .iter()
        .enumerate()
        .flat_map(|(i, b)| {
            (0..8)
                .filter(move |j| b & (1 << j) != 0)
                .map(move |j| i as u32 * 8 + j)
        })
        .collect()
}

/// systemd's byte mask of a set.
fn to_mask(set: &BTreeSet<u32>) -> Vec<u8> {
    let Some(max) = set.last() else {
        return Vec::new();
    };
    let mut bytes = vec![0u8; *max as usize / 8 + 1];
    for m in set {
        bytes[*m as usize / 8] |= 1 << (m % 8);
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte mask as systemd documents it (`AllowedCPUs` in org.freedesktop.systemd1(5):
    /// "an array of bytes... each bit a CPU"): CPUs 0, 2-3 and 9 are 0b0000_1101, 0b10.
    #[test]
    fn masks_are_systemds_bytes() {
        let set: BTreeSet<u32> = [0, 2, 3, 9].into();
        assert_eq!(to_mask(&set), vec![0b0000_1101, 0b0000_0010]);
        assert_eq!(from_mask(&[0b0000_1101, 0b0000_0010]), set);
        assert!(to_mask(&BTreeSet::new()).is_empty());
        assert!(from_mask(&[]).is_empty());
    }

    #[test]
    fn only_units_with_cpus_are_asked() {
        assert!(interface("nginx.service").is_ok());
        assert!(interface("user.slice").is_ok());
        let e = interface("default.target").unwrap_err().to_string();
        assert!(e.contains("default.target"), "{e}");
    }
}
