//! Every kernel this CPU supports against the NIST CAVP vectors (gcmEncryptExtIV256,
//! 96-bit IV, 128-bit tag: 375 cases) and Wycheproof's aes_gcm_test.json (256-bit keys,
//! 96-bit IV: 66 cases, 27 of them invalid), sealing and opening.

mod common;

use record_gcm::{Aes256Gcm, Error, Kernel};

struct Case {
    name: String,
    key: [u8; 32],
    nonce: [u8; 12],
    aad: Vec<u8>,
    pt: Vec<u8>,
    ct: Vec<u8>,
    tag: [u8; 16],
    valid: bool,
}

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).expect("test data is hex")
}

fn nist() -> Vec<Case> {
    let text = include_str!("data/nist_gcm_encrypt_ext_iv256.rsp");
    let mut cases = Vec::new();
    let mut fields = std::collections::HashMap::new();
    let mut flush = |fields: &mut std::collections::HashMap<String, String>| {
        if fields.is_empty() {
            return;
        }
        let f = |k: &str| unhex(&fields[k]);
        cases.push(Case {
            name: format!("NIST count {}", fields["Count"]),
            key: f("Key").try_into().unwrap(),
            nonce: f("IV").try_into().unwrap(),
            aad: f("AAD"),
            pt: f("PT"),
            ct: f("CT"),
            tag: f("Tag").try_into().unwrap(),
            valid: true,
        });
        fields.clear();
    };
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            flush(&mut fields);
            continue;
        }
        let (k, v) = line.split_once(" = ").expect("key = value");
        fields.insert(k.to_string(), v.to_string());
    }
    flush(&mut fields);
    cases
}

fn wycheproof() -> Vec<Case> {
    let json: serde_json::Value =
        serde_json::from_str(include_str!("data/wycheproof_aes_gcm_256.json")).unwrap();
    let mut cases = Vec::new();
    for group in json["testGroups"].as_array().unwrap() {
        assert_eq!(group["keySize"], 256);
        assert_eq!(group["ivSize"], 96);
        assert_eq!(group["tagSize"], 128);
        for t in group["tests"].as_array().unwrap() {
            let s = |k: &str| unhex(t[k].as_str().unwrap());
            let result = t["result"].as_str().unwrap();
            assert!(result == "valid" || result == "invalid", "{result}");
            cases.push(Case {
                name: format!("Wycheproof tcId {} {}", t["tcId"], t["comment"]),
                key: s("key").try_into().unwrap(),
                nonce: s("iv").try_into().unwrap(),
                aad: s("aad"),
                pt: s("msg"),
                ct: s("ct"),
                tag: s("tag").try_into().unwrap(),
                valid: result == "valid",
            });
        }
    }
    cases
}

fn check(kernel: Kernel, cases: &[Case]) -> (usize, usize) {
    let (mut valid, mut invalid) = (0, 0);
    for c in cases {
        let gcm = Aes256Gcm::with_kernel(&c.key, kernel).unwrap();
        assert_eq!(gcm.kernel(), kernel);
        let mut buf = c.ct.clone();
        let opened = gcm.open_in_place(&c.nonce, &c.aad, &mut buf, &c.tag);
        if c.valid {
            valid += 1;
            assert_eq!(opened, Ok(()), "{kernel}: {} did not open", c.name);
            assert_eq!(buf, c.pt, "{kernel}: {} opened wrong", c.name);
            let mut buf = c.pt.clone();
            let tag = gcm.seal_in_place(&c.nonce, &c.aad, &mut buf).unwrap();
            assert_eq!(buf, c.ct, "{kernel}: {} ciphertext", c.name);
            assert_eq!(tag, c.tag, "{kernel}: {} tag", c.name);
        } else {
            invalid += 1;
            assert_eq!(opened, Err(Error::AuthFailed), "{kernel}: {}", c.name);
            assert!(
                buf.iter().all(|b| *b == 0),
                "{kernel}: {} not zeroed",
                c.name
            );
        }
    }
    (valid, invalid)
}

#[test]
fn nist_cavp_vectors_on_every_kernel() {
    let cases = nist();
    assert_eq!(cases.len(), 375);
    for kernel in common::kernels() {
        assert_eq!(check(kernel, &cases), (375, 0));
    }
}

#[test]
fn wycheproof_vectors_on_every_kernel() {
    let cases = wycheproof();
    assert_eq!(cases.len(), 66);
    for kernel in common::kernels() {
        assert_eq!(check(kernel, &cases), (39, 27));
    }
}

#[test]
fn self_test_passes_on_every_kernel() {
    for kernel in common::kernels() {
        record_gcm::self_test(kernel).unwrap();
    }
}

#[test]
fn unsupported_kernels_are_refused_not_run() {
    for kernel in Kernel::ALL {
        let r = Aes256Gcm::with_kernel(&[0; 32], kernel);
        match kernel.missing() {
            None => assert_eq!(r.unwrap().kernel(), kernel),
            Some(m) => assert!(matches!(r, Err(Error::Unsupported(k, w)) if k == kernel && w == m)),
        }
    }
    assert_eq!(Aes256Gcm::new(&[0; 32]).kernel(), Kernel::best());
}
