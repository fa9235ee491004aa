//! From the user-facing `ContainerRequest` to the runtime's OCI spec.

use std::path::PathBuf;

use flotilla_api::ContainerRequest;
use flotilla_runtime::config::{default_spec, invalid, ConfigError};
use flotilla_runtime::runtime::CreateOptions;
use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxIdMappingBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder,
    LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, Spec, UserBuilder,
};

/// CFS period used for millicore limits.
pub const CPU_PERIOD_US: u64 = 100_000;

/// The root filesystem and configuration defaults of a container made from an image.
pub struct ImageSource {
    pub name: String,
    pub id: String,
    /// Layer directories, top-most first.
    pub lower_dirs: Vec<PathBuf>,
    pub config: flotilla_image::ImageConfig,
}

pub fn to_create_options(
    req: &ContainerRequest,
    image: Option<&ImageSource>,
) -> Result<CreateOptions, ConfigError> {
    let lower_dirs: Vec<PathBuf> = match (image, req.rootfs.is_empty()) {
        (Some(_), false) => {
            return Err(invalid(
                "rootfs",
                "give either an image or rootfs directories, not both",
            ))
        }
        (Some(i), true) => i.lower_dirs.clone(),
        (None, false) => req.rootfs.iter().map(PathBuf::from).collect(),
        (None, true) => {
            return Err(invalid(
                "rootfs",
                "an image or at least one directory is required",
            ))
        }
    };
    let spec = match &req.oci {
        Some(v) => serde_json::from_value::<Spec>(v.clone())
            .map_err(|e| invalid("oci", format!("not a valid OCI runtime configuration: {e}")))?,
        None => build_spec(req, image.map(|i| &i.config))?,
    };
    let mut labels = req.labels.clone();
    if let Some(i) = image {
        labels.insert("flotilla.image".into(), i.name.clone());
        labels.insert("flotilla.image.id".into(), i.id.clone());
    }
    Ok(CreateOptions {
        id: req.name.clone(),
        lower_dirs,
        spec,
        labels,
    })
}

/// "uid[:gid]" from an image's User; names would need the image's
/// /etc/passwd, which is not read yet.
fn image_user(u: &str) -> Result<(u32, u32), ConfigError> {
    let (a, b) = u.split_once(':').unwrap_or((u, ""));
    let num = |s: &str| -> Result<u32, ConfigError> {
        match s {
            "root" => Ok(0),
            _ => s.parse().map_err(|_| {
                invalid(
                    "image.config.User",
                    format!("{u:?}: only numeric ids (or root) are supported"),
                )
            }),
        }
    };
    let uid = num(a)?;
    let gid = if b.is_empty() { uid } else { num(b)? };
    Ok((uid, gid))
}

fn build_spec(
    req: &ContainerRequest,
    image: Option<&flotilla_image::ImageConfig>,
) -> Result<Spec, ConfigError> {
    let args: Vec<String> = match image {
        Some(c) => {
            let mut a = c.entrypoint();
            a.extend(if req.command.is_empty() {
                c.cmd()
            } else {
                req.command.clone()
            });
            a
        }
        None => req.command.clone(),
    };
    if args.is_empty() {
        return Err(invalid(
            "command",
            "must name a program to run (the image has no Entrypoint or Cmd)",
        ));
    }
    let mut spec = default_spec(args);
    let process = spec.process_mut().as_mut().expect("default has a process");
    let mut env = process.env().clone().unwrap_or_default();
    if let Some(c) = image {
        for e in c.env() {
            if let Some((k, _)) = e.split_once('=') {
                env.retain(|x| !x.starts_with(&format!("{k}=")));
                env.push(e);
            }
        }
        if let Some(w) = c.working_dir().filter(|w| !w.is_empty()) {
            process.set_cwd(w.into());
        }
        if let Some(u) = c.user().filter(|u| !u.is_empty()) {
            let (uid, gid) = image_user(&u)?;
            process.set_user(
                UserBuilder::default()
                    .uid(uid)
                    .gid(gid)
                    .build()
                    .map_err(|e| invalid("image.config.User", e.to_string()))?,
            );
        }
    }
    for (i, e) in req.env.iter().enumerate() {
        let Some((k, _)) = e.split_once('=') else {
            return Err(invalid(
                format!("env[{i}]"),
                format!("must be KEY=VALUE, got {e:?}"),
            ));
        };
        if k.is_empty() {
            return Err(invalid(format!("env[{i}]"), "the name must not be empty"));
        }
        env.retain(|x| !x.starts_with(&format!("{k}=")));
        env.push(e.clone());
    }
    process.set_env(Some(env));
    if let Some(c) = &req.cwd {
        process.set_cwd(c.into());
    }
    if let Some(u) = req.user {
        process.set_user(
            UserBuilder::default()
                .uid(u.uid)
                .gid(u.gid)
                .build()
                .map_err(|e| invalid("user", e.to_string()))?,
        );
    }
    spec.set_hostname(Some(
        req.hostname.clone().unwrap_or_else(|| req.name.clone()),
    ));
    if let Some(root) = spec.root_mut() {
        root.set_readonly(Some(req.read_only_root));
    }
    let r = &req.resources;
    let mut res = LinuxResourcesBuilder::default();
    if let Some(m) = r.memory_bytes {
        res = res.memory(
            LinuxMemoryBuilder::default()
                .limit(m)
                .build()
                .expect("memory"),
        );
    }
    if r.cpu_millis.is_some() || r.cpu_shares.is_some() {
        let mut cpu = LinuxCpuBuilder::default();
        if let Some(m) = r.cpu_millis {
            if m == 0 {
                return Err(invalid("resources.cpuMillis", "must be positive"));
            }
            let quota = m
                .checked_mul(CPU_PERIOD_US)
                .map(|v| v / 1000)
                .filter(|q| *q <= i64::MAX as u64)
                .ok_or_else(|| invalid("resources.cpuMillis", format!("{m} is too large")))?;
            cpu = cpu.quota(quota as i64).period(CPU_PERIOD_US);
        }
        if let Some(s) = r.cpu_shares {
            cpu = cpu.shares(s);
        }
        res = res.cpu(cpu.build().expect("cpu"));
    }
    if let Some(p) = r.pids {
        res = res.pids(LinuxPidsBuilder::default().limit(p).build().expect("pids"));
    }
    let linux = spec.linux_mut().as_mut().expect("default has linux");
    linux.set_resources(Some(res.build().expect("resources")));
    if let Some(u) = req.user_namespace {
        if u.size == 0 {
            return Err(invalid("userNamespace.size", "must be positive"));
        }
        let mut ns = linux.namespaces().clone().unwrap_or_default();
        ns.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::User)
                .build()
                .expect("ns"),
        );
        linux.set_namespaces(Some(ns));
        let map = |host: u32| {
            LinuxIdMappingBuilder::default()
                .container_id(0u32)
                .host_id(host)
                .size(u.size)
                .build()
                .expect("map")
        };
        linux.set_uid_mappings(Some(vec![map(u.host_uid)]));
        linux.set_gid_mappings(Some(vec![map(u.host_gid)]));
    }
    Ok(spec)
}

/// Parse sizes like 64M, 1.5G, 512k, 1048576.
pub fn parse_bytes(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some(c) if c.is_ascii_alphabetic() => {
            let m: f64 = match c.to_ascii_lowercase() {
                'k' => 1024.0,
                'm' => 1024.0 * 1024.0,
                'g' => 1024.0 * 1024.0 * 1024.0,
                'b' => 1.0,
                _ => return Err(format!("unknown size suffix in {s:?} (use k, m or g)")),
            };
            (&s[..s.len() - 1], m)
        }
        _ => (s, 1.0),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 64m or 1g"))?;
    if !(v.is_finite() && v > 0.0) {
        return Err(format!("{s:?} must be a positive size"));
    }
    let b = v * mult;
    if b > i64::MAX as f64 {
        return Err(format!("{s:?} is too large"));
    }
    Ok(b as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_api::{ResourceSpec, UserNamespaceSpec};

    fn req() -> ContainerRequest {
        ContainerRequest {
            name: "web".into(),
            rootfs: vec!["/r".into()],
            command: vec!["sh".into()],
            start: true,
            ..Default::default()
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("64m").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("1G").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("1000").unwrap(), 1000);
        assert!(parse_bytes("-1").is_err());
        assert!(parse_bytes("12q").is_err());
        assert!(parse_bytes("nan").is_err());
    }

    #[test]
    fn resources_and_userns_lower() {
        let mut r = req();
        r.resources = ResourceSpec {
            memory_bytes: Some(64 << 20),
            cpu_millis: Some(500),
            cpu_shares: None,
            pids: Some(32),
        };
        r.user_namespace = Some(UserNamespaceSpec {
            host_uid: 100000,
            host_gid: 100000,
            size: 65536,
        });
        let o = to_create_options(&r, None).unwrap();
        let c = flotilla_runtime::config::from_spec(&o.spec).unwrap();
        assert_eq!(c.resources.cpu_quota, Some(50_000));
        assert_eq!(c.resources.memory_limit, Some(64 << 20));
        assert_eq!(c.resources.pids_limit, Some(32));
        assert_eq!(c.uid_map[0].host_id, 100000);
        assert_eq!(c.hostname.as_deref(), Some("web"));
    }

    #[test]
    fn bad_env_named() {
        let mut r = req();
        r.env = vec!["A=1".into(), "B".into()];
        let e = to_create_options(&r, None).err().unwrap().to_string();
        assert!(e.starts_with("env[1]"), "{e}");
    }
}
