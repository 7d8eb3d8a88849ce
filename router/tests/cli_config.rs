//! `weave-router launch` configuration: flags, the DaemonSet's environment, defaults and
//! refusals, all through the pure `Config::resolve`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use clap::Parser;
use weave_router::config::{Config, ConfigError, HostInfo, LaunchArgs, PeerAddr};
use weave_router::ids::PeerName;

#[derive(Debug, Parser)]
struct Launch {
    #[command(flatten)]
    args: LaunchArgs,
}

fn host() -> HostInfo {
    HostInfo {
        hostname: "node-a".into(),
        machine_id: Some("0123456789abcdef0123456789abcdef".into()),
    }
}

fn resolve(argv: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let launch = Launch::try_parse_from(std::iter::once("launch").chain(argv.iter().copied()))
        .expect("flags parse");
    let env: BTreeMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::resolve(&launch.args, &env, &host())
}

fn ip(s: &str) -> PeerAddr {
    PeerAddr::Ip(s.parse().unwrap())
}

#[test]
fn defaults() {
    let c = resolve(&[], &[]).unwrap();
    assert_eq!(c.nickname, "node-a");
    assert_eq!(c.port, 6783);
    assert_eq!(c.http_addr, Some("127.0.0.1:6784".parse().unwrap()));
    assert_eq!(c.metrics_addr, Some("127.0.0.1:6782".parse().unwrap()));
    assert_eq!(c.conn_limit, 200);
    assert!(c.discovery);
    assert!(c.peers.is_empty());
    assert!(c.offload);
    // The default name is derived from the machine id: the same machine, the same name.
    assert_eq!(c.name, resolve(&[], &[]).unwrap().name);
    let other = HostInfo {
        machine_id: Some("fedcba9876543210fedcba9876543210".into()),
        ..host()
    };
    let c2 = Config::resolve(&LaunchArgs::default(), &BTreeMap::new(), &other).unwrap();
    assert_ne!(c.name, c2.name);
}

#[test]
fn name_falls_back_to_host_name_without_machine_id() {
    let a = HostInfo {
        hostname: "node-a".into(),
        machine_id: None,
    };
    let b = HostInfo {
        hostname: "node-b".into(),
        machine_id: None,
    };
    let ca = Config::resolve(&LaunchArgs::default(), &BTreeMap::new(), &a).unwrap();
    let cb = Config::resolve(&LaunchArgs::default(), &BTreeMap::new(), &b).unwrap();
    assert_ne!(ca.name, cb.name);
    assert_eq!(ca.name.to_bytes()[0] & 0x03, 0x02);
}

#[test]
fn flags_like_weave() {
    let c = resolve(
        &[
            "--name=aa:00:00:00:00:02",
            "--nickname=host2",
            "--port=7000",
            "--http-addr=127.0.0.1:7001",
            "--metrics-addr=0.0.0.0:7002",
            "--conn-limit=30",
            "--no-discovery",
            "192.168.77.1",
            "[fd00::1]:7003",
            "node-3",
        ],
        &[],
    )
    .unwrap();
    assert_eq!(c.name, "aa:00:00:00:00:02".parse::<PeerName>().unwrap());
    assert_eq!(c.nickname, "host2");
    assert_eq!(c.port, 7000);
    assert_eq!(c.http_addr, Some("127.0.0.1:7001".parse().unwrap()));
    assert_eq!(c.metrics_addr, Some("0.0.0.0:7002".parse().unwrap()));
    assert_eq!(c.conn_limit, 30);
    assert!(!c.discovery);
    // Peers without a port get the mesh port.
    assert_eq!(
        c.peers,
        [
            ip("192.168.77.1:7000"),
            ip("[fd00::1]:7003"),
            PeerAddr::Host {
                host: "node-3".into(),
                port: 7000
            }
        ]
    );
}

#[test]
fn environment_like_the_daemonset() {
    let c = resolve(
        &[],
        &[
            ("WEAVE_NAME", "aa:00:00:00:00:03"),
            ("WEAVE_NICKNAME", "host3"),
            ("WEAVE_PORT", "6790"),
            ("WEAVE_STATUS_ADDR", "[::1]:6791"),
            ("WEAVE_METRICS_ADDR", "0.0.0.0:6792"),
            ("CONN_LIMIT", "0"),
            ("WEAVE_NO_DISCOVERY", "1"),
            ("KUBE_PEERS", "10.0.0.1 10.0.0.2,10.0.0.3:6800 ,10.0.0.1"),
        ],
    )
    .unwrap();
    assert_eq!(c.name.to_string(), "aa:00:00:00:00:03");
    assert_eq!(c.nickname, "host3");
    assert_eq!(c.port, 6790);
    assert_eq!(c.http_addr, Some("[::1]:6791".parse().unwrap()));
    assert_eq!(c.metrics_addr, Some("0.0.0.0:6792".parse().unwrap()));
    assert_eq!(c.conn_limit, 0);
    assert!(!c.discovery);
    assert_eq!(
        c.peers,
        [
            ip("10.0.0.1:6790"),
            ip("10.0.0.2:6790"),
            ip("10.0.0.3:6800")
        ]
    );
}

#[test]
fn flags_win_over_environment() {
    let c = resolve(
        &["--port=7100", "--conn-limit=5", "--http-addr=127.0.0.2:1"],
        &[
            ("WEAVE_PORT", "7200"),
            ("CONN_LIMIT", "x"),
            ("WEAVE_HTTP_ADDR", "10.0.0.1:6784"),
        ],
    )
    .unwrap();
    assert_eq!(c.port, 7100);
    assert_eq!(c.conn_limit, 5);
    assert_eq!(c.http_addr, Some("127.0.0.2:1".parse().unwrap()));
    // WEAVE_HTTP_ADDR wins over its alias WEAVE_STATUS_ADDR.
    let c = resolve(
        &[],
        &[
            ("WEAVE_HTTP_ADDR", "127.0.0.1:1"),
            ("WEAVE_STATUS_ADDR", "127.0.0.1:2"),
        ],
    )
    .unwrap();
    assert_eq!(c.http_addr, Some("127.0.0.1:1".parse().unwrap()));
    // Flag peers come first, then KUBE_PEERS.
    let c = resolve(&["10.0.0.9"], &[("KUBE_PEERS", "10.0.0.8")]).unwrap();
    assert_eq!(c.peers, [ip("10.0.0.9:6783"), ip("10.0.0.8:6783")]);
}

#[test]
fn empty_addresses_turn_listeners_off() {
    let c = resolve(&["--http-addr=", "--metrics-addr="], &[]).unwrap();
    assert_eq!((c.http_addr, c.metrics_addr), (None, None));
}

#[test]
fn offloads_can_be_turned_off() {
    assert!(!resolve(&["--offload=off"], &[]).unwrap().offload);
    assert!(!resolve(&[], &[("WEAVE_OFFLOAD", "off")]).unwrap().offload);
    assert!(
        resolve(&["--offload", "on"], &[("WEAVE_OFFLOAD", "off")])
            .unwrap()
            .offload
    );
}

#[test]
fn topology_digests_are_offered_unless_weave_gossip_is_asked_for() {
    assert!(resolve(&[], &[]).unwrap().topology_digest);
    assert!(
        !resolve(&["--topology-gossip", "weave"], &[])
            .unwrap()
            .topology_digest
    );
    assert!(
        !resolve(&[], &[("WEAVE_TOPOLOGY_GOSSIP", "weave")])
            .unwrap()
            .topology_digest
    );
    assert!(
        resolve(
            &["--topology-gossip=digest"],
            &[("WEAVE_TOPOLOGY_GOSSIP", "weave")]
        )
        .unwrap()
        .topology_digest
    );
}

#[test]
fn busy_polling_is_bounded_and_can_be_turned_off() {
    use std::time::Duration;
    assert_eq!(
        resolve(&[], &[]).unwrap().busy_poll,
        Duration::from_micros(50)
    );
    assert_eq!(
        resolve(&["--busy-poll=0"], &[]).unwrap().busy_poll,
        Duration::ZERO
    );
    assert_eq!(
        resolve(&[], &[("WEAVE_BUSY_POLL", "200")])
            .unwrap()
            .busy_poll,
        Duration::from_micros(200)
    );
    assert_eq!(
        resolve(&["--busy-poll", "1000"], &[("WEAVE_BUSY_POLL", "0")])
            .unwrap()
            .busy_poll,
        Duration::from_millis(1)
    );
}

#[test]
fn bad_values_are_refused_by_name() {
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (
            &["--conn-limit=x"],
            &[],
            "invalid value 'x' for '--conn-limit'",
        ),
        (
            &[],
            &[("CONN_LIMIT", "-1")],
            "invalid value '-1' for 'CONN_LIMIT'",
        ),
        (&["--port=0"], &[], "invalid value '0' for '--port'"),
        (
            &[],
            &[("WEAVE_PORT", "65536")],
            "invalid value '65536' for 'WEAVE_PORT'",
        ),
        (&["--name=aa:bb"], &[], "invalid value 'aa:bb' for '--name'"),
        (
            &[],
            &[("WEAVE_NAME", "zz:00:00:00:00:01")],
            "invalid value 'zz:00:00:00:00:01' for 'WEAVE_NAME'",
        ),
        (
            &["--metrics-addr=localhost"],
            &[],
            "invalid value 'localhost' for '--metrics-addr'",
        ),
        (
            &[],
            &[("WEAVE_NO_DISCOVERY", "maybe")],
            "invalid value 'maybe' for 'WEAVE_NO_DISCOVERY'",
        ),
        (
            &[],
            &[("KUBE_PEERS", "10.0.0.1 a:b:c")],
            "KUBE_PEERS: bad peer address 'a:b:c'",
        ),
        (
            &["--offload=maybe"],
            &[],
            "invalid value 'maybe' for '--offload'",
        ),
        (
            &[],
            &[("WEAVE_OFFLOAD", "0")],
            "invalid value '0' for 'WEAVE_OFFLOAD'",
        ),
        (
            &["--busy-poll=1001"],
            &[],
            "invalid value '1001' for '--busy-poll'",
        ),
        (
            &[],
            &[("WEAVE_BUSY_POLL", "-5")],
            "invalid value '-5' for 'WEAVE_BUSY_POLL'",
        ),
        (
            &["--topology-gossip=full"],
            &[],
            "invalid value 'full' for '--topology-gossip'",
        ),
        (
            &[],
            &[("WEAVE_TOPOLOGY_GOSSIP", "on")],
            "invalid value 'on' for 'WEAVE_TOPOLOGY_GOSSIP'",
        ),
        (
            &["host:99999"],
            &[],
            "peer argument: bad peer address 'host:99999'",
        ),
    ];
    for (argv, env, want) in cases {
        let err = resolve(argv, env).unwrap_err().to_string();
        assert!(
            err.starts_with(want),
            "{argv:?} {env:?}: got {err:?}, want {want:?}"
        );
    }
}

#[test]
fn http_api_must_stay_on_loopback() {
    for (argv, env) in [
        (vec!["--http-addr=0.0.0.0:6784"], vec![]),
        (vec![], vec![("WEAVE_HTTP_ADDR", "10.1.2.3:6784")]),
        (vec![], vec![("WEAVE_STATUS_ADDR", "[::]:6784")]),
    ] {
        let err = resolve(&argv, &env).unwrap_err();
        assert!(
            matches!(err, ConfigError::NonLoopbackHttp { .. }),
            "{argv:?} {env:?}: {err}"
        );
        assert!(err.to_string().contains("unauthenticated"), "{err}");
    }
    let ok: SocketAddr = "[::1]:6784".parse().unwrap();
    assert_eq!(
        resolve(&["--http-addr=[::1]:6784"], &[]).unwrap().http_addr,
        Some(ok)
    );
}

#[test]
fn ipam_defaults_flags_and_environment() {
    use weave_router::config::IpamInit;
    use weave_router::ipam::allocator::Init;
    let c = resolve(&["10.0.0.1", "10.0.0.2"], &[]).unwrap();
    let ipam = c.ipam.expect("IPAM is on by default");
    assert_eq!(ipam.range.to_string(), "10.32.0.0/12");
    assert_eq!(ipam.default_subnet, ipam.range);
    assert_eq!(ipam.init, IpamInit::Consensus(None));
    assert_eq!(ipam.db_dir, std::path::PathBuf::from("/var/lib/weave"));
    // Without N, a majority of the initial peers and ourselves, as Weave counts it.
    assert_eq!(ipam.init.to_allocator(2), Init::Consensus { quorum: 2 });
    assert_eq!(
        IpamInit::Consensus(Some(3)).to_allocator(0),
        Init::Consensus { quorum: 2 }
    );

    let c = resolve(
        &[
            "--ipalloc-range=10.0.0.0/16",
            "--ipalloc-default-subnet=10.0.1.0/24",
            "--ipalloc-init=seed=aa:00:00:00:00:01,aa:00:00:00:00:02",
            "--db-dir=/tmp/x",
        ],
        &[
            ("IPALLOC_RANGE", "10.99.0.0/16"),
            ("IPALLOC_INIT", "observer"),
        ],
    )
    .unwrap();
    let ipam = c.ipam.unwrap();
    assert_eq!(ipam.range.to_string(), "10.0.0.0/16", "flags win");
    assert_eq!(ipam.default_subnet.to_string(), "10.0.1.0/24");
    assert_eq!(
        ipam.init,
        IpamInit::Seed(vec![
            "aa:00:00:00:00:01".parse().unwrap(),
            "aa:00:00:00:00:02".parse().unwrap()
        ])
    );
    assert_eq!(ipam.db_dir, std::path::PathBuf::from("/tmp/x"));

    let c = resolve(
        &[],
        &[
            ("IPALLOC_RANGE", "10.99.0.0/16"),
            ("IPALLOC_INIT", "consensus=5"),
            ("WEAVE_DB_DIR", "/data"),
        ],
    )
    .unwrap();
    let ipam = c.ipam.unwrap();
    assert_eq!(ipam.range.to_string(), "10.99.0.0/16");
    assert_eq!(ipam.init, IpamInit::Consensus(Some(5)));
    assert_eq!(ipam.db_dir, std::path::PathBuf::from("/data"));

    assert!(resolve(&["--ipalloc-range="], &[]).unwrap().ipam.is_none());
}

#[test]
fn bad_ipam_settings_are_refused_naming_the_field() {
    for (argv, env, field) in [
        (
            vec!["--ipalloc-range=10.32.0.1/12"],
            vec![],
            "--ipalloc-range",
        ),
        (vec!["--ipalloc-range=banana"], vec![], "--ipalloc-range"),
        (
            vec![],
            vec![("IPALLOC_RANGE", "10.32.0.0/33")],
            "IPALLOC_RANGE",
        ),
        (
            vec!["--ipalloc-default-subnet=192.168.0.0/24"],
            vec![],
            "--ipalloc-default-subnet",
        ),
        (vec!["--ipalloc-init=consensus=0"], vec![], "--ipalloc-init"),
        (vec!["--ipalloc-init=seed="], vec![], "--ipalloc-init"),
        (vec!["--ipalloc-init=seed=nobody"], vec![], "--ipalloc-init"),
        (vec![], vec![("IPALLOC_INIT", "election")], "IPALLOC_INIT"),
        (vec!["--db-dir="], vec![], "--db-dir"),
    ] {
        let err = resolve(&argv, &env).expect_err("refused").to_string();
        assert!(
            err.contains(&format!("'{field}'")),
            "{argv:?} {env:?}: {err}"
        );
    }
}

#[test]
fn kubernetes_turns_on_in_a_cluster_and_names_the_node() {
    // Outside a cluster: off.
    assert_eq!(resolve(&[], &[]).unwrap().kubernetes, None);
    let in_cluster = [
        ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
        ("HOSTNAME", "host-7"),
    ];
    let k = resolve(&[], &in_cluster).unwrap().kubernetes.unwrap();
    assert_eq!(
        k.node_name, "host-7",
        "Kubernetes sets HOSTNAME to the node's name"
    );
    assert!(k.discover_peers);
    assert_eq!(k.reclaim_jitter, std::time::Duration::from_secs(5));
    // The downward API's NODE_NAME wins over HOSTNAME; peers given turn discovery off.
    let k = resolve(
        &[],
        &[
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("HOSTNAME", "host-7"),
            ("NODE_NAME", "node-7"),
            ("KUBE_PEERS", "10.0.0.1"),
            ("WEAVE_RECLAIM_JITTER", "0"),
        ],
    )
    .unwrap()
    .kubernetes
    .unwrap();
    assert_eq!(k.node_name, "node-7");
    assert!(!k.discover_peers);
    assert_eq!(k.reclaim_jitter, std::time::Duration::ZERO);
    // Forced on (KUBECONFIG) with the host name; forced off in a cluster.
    let k = resolve(&["--kubernetes=on"], &[])
        .unwrap()
        .kubernetes
        .unwrap();
    assert_eq!(k.node_name, "node-a");
    assert_eq!(
        resolve(&["--kubernetes", "off"], &in_cluster)
            .unwrap()
            .kubernetes,
        None
    );
    let k = resolve(&["--kubernetes=on", "--node-name=n1"], &[])
        .unwrap()
        .kubernetes
        .unwrap();
    assert_eq!(k.node_name, "n1");
}

#[test]
fn mtu_fastdp_and_password_settings() {
    let c = resolve(&[], &[]).unwrap();
    assert_eq!(c.mtu, None);
    assert!(!c.no_fastdp);
    let c = resolve(&[], &[("WEAVE_MTU", "8916"), ("WEAVE_NO_FASTDP", "1")]).unwrap();
    assert_eq!(c.mtu, Some(8916));
    assert!(c.no_fastdp);
    assert_eq!(resolve(&["--mtu=1376"], &[]).unwrap().mtu, Some(1376));
    assert!(resolve(&["--no-fastdp"], &[]).unwrap().no_fastdp);
    // Weave's manifests leave WEAVE_MTU empty when unset.
    assert_eq!(resolve(&[], &[("WEAVE_MTU", "")]).unwrap().mtu, None);
    for (env, want) in [
        (("WEAVE_MTU", "500"), "invalid value '500' for 'WEAVE_MTU'"),
        (
            ("WEAVE_MTU", "jumbo"),
            "invalid value 'jumbo' for 'WEAVE_MTU'",
        ),
        (
            ("WEAVE_NO_FASTDP", "perhaps"),
            "invalid value 'perhaps' for 'WEAVE_NO_FASTDP'",
        ),
        (
            ("WEAVE_KUBERNETES", "maybe"),
            "invalid value 'maybe' for 'WEAVE_KUBERNETES'",
        ),
        (
            ("WEAVE_RECLAIM_JITTER", "1m"),
            "invalid value '1m' for 'WEAVE_RECLAIM_JITTER'",
        ),
        (
            ("WEAVE_PASSWORD_FILE", "/nonexistent/weave/password"),
            "invalid value '/nonexistent/weave/password' for 'WEAVE_PASSWORD_FILE': cannot read",
        ),
        (
            ("WEAVE_TRUSTED_SUBNETS", "10.0.0.0/8,fd00::/8"),
            "invalid value '10.0.0.0/8,fd00::/8' for 'WEAVE_TRUSTED_SUBNETS'",
        ),
    ] {
        let err = resolve(&[], &[env]).unwrap_err().to_string();
        assert!(err.starts_with(want), "{env:?}: got {err:?}");
    }
    // An empty password (the Secret's key absent) means none.
    assert_eq!(
        resolve(&[], &[("WEAVE_PASSWORD", "")]).unwrap().encryption,
        None
    );
}

#[test]
fn password_from_flag_env_or_file_never_printed() {
    let e = resolve(&[], &[("WEAVE_PASSWORD", "s3cret")])
        .unwrap()
        .encryption
        .expect("a password");
    assert_eq!(e.password.as_slice(), b"s3cret");
    assert!(e.trusted_subnets.is_empty());
    let c = resolve(&["--password=s3cret"], &[]).unwrap();
    assert!(!format!("{c:?}").contains("s3cret"), "Debug hides it");

    // A mounted Secret, byte for byte: the newline is part of the password.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("password");
    std::fs::write(&file, b"from-secret\n").unwrap();
    let path = file.to_str().unwrap();
    let e = resolve(&[], &[("WEAVE_PASSWORD_FILE", path)])
        .unwrap()
        .encryption
        .unwrap();
    assert_eq!(e.password.as_slice(), b"from-secret\n");
    let flag = format!("--password-file={path}");
    assert!(resolve(&[&flag], &[]).unwrap().encryption.is_some());

    // Two sources are refused, naming both and printing neither password.
    let err = resolve(&[&flag], &[("WEAVE_PASSWORD", "s3cret")])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--password-file") && err.contains("WEAVE_PASSWORD"),
        "{err}"
    );
    assert!(
        !err.contains("s3cret") && !err.contains("from-secret"),
        "{err}"
    );
    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    let err = resolve(&[], &[("WEAVE_PASSWORD_FILE", empty.to_str().unwrap())])
        .unwrap_err()
        .to_string();
    assert!(err.contains("the file is empty"), "{err}");

    let e = resolve(
        &["--trusted-subnets", "10.0.0.0/8, 192.168.1.0/24"],
        &[("WEAVE_PASSWORD", "s3cret")],
    )
    .unwrap()
    .encryption
    .unwrap();
    let subnets: Vec<String> = e.trusted_subnets.iter().map(|c| c.to_string()).collect();
    assert_eq!(subnets, ["10.0.0.0/8", "192.168.1.0/24"]);
    assert!(
        e.fast_cipher,
        "AES-256-GCM between weave-routers by default"
    );
    let weave_only = |v: &str| {
        resolve(
            &[],
            &[("WEAVE_PASSWORD", "s3cret"), ("WEAVE_SLEEVE_CIPHER", v)],
        )
        .map(|c| c.encryption.unwrap().fast_cipher)
    };
    assert_eq!(weave_only("weave"), Ok(false));
    assert_eq!(weave_only("auto"), Ok(true));
    let err = weave_only("des").unwrap_err().to_string();
    assert!(
        err.starts_with("invalid value 'des' for 'WEAVE_SLEEVE_CIPHER'"),
        "{err}"
    );
}
