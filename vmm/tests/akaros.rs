//! Akaros: the two files vmrunkernel reads and its argument list.

use camino::Utf8PathBuf;
use vmm::akaros::{self, Cmdline, Options, PortForward, VnetOpts};

fn options(dir: &Utf8PathBuf) -> Options {
    Options {
        binary: "vmrunkernel".into(),
        cpus: 8,
        kernel: dir.join("vmlinux"),
        initramfs: dir.join("initramfs.cpio.gz"),
        cmdline: Cmdline::default(),
        vnet: VnetOpts::default(),
        dir: dir.join("akaros"),
    }
}

#[test]
fn defaults_are_the_old_readmes_files() {
    assert_eq!(
        Cmdline::default().render(),
        "console=hvc0\nmitigations=off\nnozswap\n"
    );
    let c = Cmdline {
        earlyprintk: true,
        extra: vec!["loglevel=8".into()],
    };
    assert_eq!(
        c.render(),
        "earlyprintk=akaros\nconsole=hvc0\nmitigations=off\nnozswap\nloglevel=8\n"
    );
    assert_eq!(
        VnetOpts::default().render(),
        "snoop\nnat_timeout = 30\nmap_diagnostics\nport:tcp:23:22\n"
    );
}

#[test]
fn each_vnet_option_is_selectable() {
    let v = VnetOpts {
        snoop: false,
        nat_timeout: Some(5),
        map_diagnostics: false,
        ports: vec!["udp:53:53".parse().unwrap(), "80:8080".parse().unwrap()],
    };
    assert_eq!(
        v.render(),
        "nat_timeout = 5\nport:udp:53:53\nport:tcp:80:8080\n"
    );
    for bad in ["23", "sctp:1:2", "tcp:x:22", "1:2:3:4", "tcp:70000:22"] {
        let e = bad.parse::<PortForward>().unwrap_err();
        assert!(format!("{e:#}").contains(bad), "{e:#}");
    }
}

#[test]
fn files_and_arguments() {
    let t = tempfile::tempdir().unwrap();
    let dir = Utf8PathBuf::from_path_buf(t.path().to_owned()).unwrap();
    let mut o = options(&dir);
    let f = akaros::write_files(&o).unwrap();
    assert_eq!(
        std::fs::read_to_string(&f.cmdline).unwrap(),
        "console=hvc0\nmitigations=off\nnozswap\n"
    );
    let vnet = f.vnet_opts.clone().unwrap();
    assert_eq!(vnet, dir.join("akaros/vnet_opts"));
    assert_eq!(
        akaros::args(&o, &f),
        [
            "-k",
            dir.join("akaros/guest_cmdline").as_str(),
            "-n",
            vnet.as_str(),
            "-N",
            "8",
            "-i",
            dir.join("initramfs.cpio.gz").as_str(),
            dir.join("vmlinux").as_str(),
        ]
    );
    // Nothing selected: no -n, and the old file does not linger.
    o.vnet = VnetOpts {
        snoop: false,
        nat_timeout: None,
        map_diagnostics: false,
        ports: vec![],
    };
    let f = akaros::write_files(&o).unwrap();
    assert!(f.vnet_opts.is_none() && !vnet.exists());
    assert!(!akaros::args(&o, &f).contains(&"-n".to_string()));
    // Missing inputs are named, with what to do.
    let e = akaros::check_inputs(&o).unwrap_err();
    assert!(format!("{e:#}").contains("full-build"), "{e:#}");
}

#[test]
fn shell_line_quotes_what_needs_it() {
    assert_eq!(
        akaros::shell_line(
            "vmrunkernel".into(),
            &["-k".into(), "a b".into(), "it's".into()]
        ),
        r"vmrunkernel -k 'a b' 'it'\''s'"
    );
}
