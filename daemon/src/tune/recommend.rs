//! `profile.recommend`: a profile from what the host is, with the observations behind it.

use cleanroom_proto::RecommendResult;

use crate::host::Host;

const VM_VENDORS: &[&str] = &[
    "QEMU",
    "VMware",
    "Xen",
    "Microsoft Corporation",
    "innotek GmbH",
    "Amazon EC2",
    "Google",
    "Red Hat",
    "KVM",
];

/// Looks at the host and picks: on battery → balanced; virtualised → virtual-guest;
/// otherwise throughput-performance.
pub fn recommend(host: &Host) -> RecommendResult {
    let mut reasons = Vec::new();
    let cpuinfo = host.read("/proc/cpuinfo").unwrap_or_default();
    let hypervisor_flag = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "hypervisor"));
    if hypervisor_flag {
        reasons.push("virtualised: /proc/cpuinfo has the hypervisor flag".to_owned());
    }
    let vendor = host
        .read("/sys/class/dmi/id/sys_vendor")
        .map(|v| v.trim().to_owned())
        .unwrap_or_default();
    let dmi_vm = VM_VENDORS.iter().any(|v| vendor.contains(v));
    if dmi_vm {
        reasons.push(format!("virtualised: DMI system vendor is {vendor:?}"));
    }
    let on_battery = host.list("/sys/class/power_supply").iter().any(|ps| {
        let base = format!("/sys/class/power_supply/{ps}");
        host.read(&format!("{base}/type"))
            .is_ok_and(|t| t.trim() == "Battery")
            && host
                .read(&format!("{base}/status"))
                .is_ok_and(|s| s.trim() == "Discharging")
    });
    if on_battery {
        reasons.push("on battery: a power supply of type Battery is discharging".to_owned());
    }
    let rotational: Vec<String> = host
        .list("/sys/block")
        .into_iter()
        .filter(|d| !d.starts_with("loop") && !d.starts_with("ram") && !d.starts_with("zram"))
        .filter(|d| {
            host.read(&format!("/sys/block/{d}/queue/rotational"))
                .is_ok_and(|r| r.trim() == "1")
        })
        .collect();
    if !rotational.is_empty() {
        reasons.push(format!("rotational disks: {}", rotational.join(", ")));
    }
    let driver = host
        .read("/sys/devices/system/cpu/cpufreq/policy0/scaling_driver")
        .map(|d| d.trim().to_owned());
    match &driver {
        Ok(d) => reasons.push(format!("cpufreq driver {d}")),
        Err(_) => reasons
            .push("no cpufreq driver (frequency is the hypervisor's or firmware's)".to_owned()),
    }
    let profile = if on_battery {
        "balanced"
    } else if hypervisor_flag || dmi_vm {
        "virtual-guest"
    } else {
        "throughput-performance"
    };
    RecommendResult {
        profile: profile.to_owned(),
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake_root as host;

    #[test]
    fn picks_by_what_the_host_is() {
        let (_d, h) = host(&[("/proc/cpuinfo", "flags\t: fpu vme hypervisor\n")]);
        let r = recommend(&h);
        assert_eq!(r.profile, "virtual-guest");
        assert!(r.reasons.iter().any(|x| x.contains("hypervisor")));

        let (_d, h) = host(&[
            ("/proc/cpuinfo", "flags\t: fpu vme\n"),
            ("/sys/block/sda/queue/rotational", "1\n"),
            (
                "/sys/devices/system/cpu/cpufreq/policy0/scaling_driver",
                "intel_pstate\n",
            ),
        ]);
        let r = recommend(&h);
        assert_eq!(r.profile, "throughput-performance");
        assert!(r.reasons.iter().any(|x| x.contains("sda")));
        assert!(r.reasons.iter().any(|x| x.contains("intel_pstate")));

        let (_d, h) = host(&[
            ("/proc/cpuinfo", "flags\t: fpu hypervisor\n"),
            ("/sys/class/power_supply/BAT0/type", "Battery\n"),
            ("/sys/class/power_supply/BAT0/status", "Discharging\n"),
        ]);
        assert_eq!(recommend(&h).profile, "balanced");
    }
}
