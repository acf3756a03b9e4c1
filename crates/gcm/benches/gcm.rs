//! Seal and open rates of every kernel this CPU runs, for the helper's records
//! (4 KiB text, 68-byte AAD), on one core, beside `openssl speed -evp aes-256-gcm`
//! (same record size) when `openssl` is on the PATH.
//!
//!     cargo bench -p record-gcm [-- --bytes N] [-- --seconds S]
//!
//! Each rate is the best of five runs (the machine is shared). Open is measured as
//! open-then-reseal of one record (which restores its ciphertext) minus seal, so no
//! copy is timed.

use harness::gcm_limits::Direction;
use record_gcm::{Aes256Gcm, Kernel};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// MB/s (10^6 bytes, as `openssl speed` counts) of `f` over records of `len` bytes.
fn rate(len: usize, budget: Duration, mut f: impl FnMut(u64)) -> f64 {
    for i in 0..500 {
        f(i);
    }
    let mut best = 0f64;
    for _ in 0..5 {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < budget {
            for _ in 0..256 {
                f(n);
                n += 1;
            }
        }
        let mbs = n as f64 * len as f64 / start.elapsed().as_secs_f64() / 1e6;
        best = best.max(mbs);
    }
    best
}

fn nonce(i: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&i.to_le_bytes());
    n
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<usize>().ok())
    };
    let len = arg("--bytes").unwrap_or(4096);
    let seconds = arg("--seconds").unwrap_or(1) as u32;
    let budget = Duration::from_millis(200 * u64::from(seconds));
    let key = [0x11u8; 32];
    let aad = [0x22u8; 68];
    println!(
        "AES-256-GCM, {len}-byte records, 68-byte AAD, one core; best kernel here: {}",
        Kernel::best()
    );
    println!("{:10} {:>10} {:>10}", "kernel", "seal MB/s", "open MB/s");
    let mut best_seal = 0f64;
    for kernel in Kernel::ALL {
        if let Some(why) = kernel.missing() {
            println!("{:10} not run: {why}", kernel.name());
            continue;
        }
        let gcm = Aes256Gcm::with_kernel(&key, kernel).expect("kernel checked above");
        let mut a = vec![0x42u8; len];
        let seal = rate(len, budget, |i| {
            black_box(
                gcm.seal_in_place(&nonce(i), &aad, black_box(&mut a))
                    .unwrap(),
            );
        });
        let mut b = vec![0x42u8; len];
        let n5 = nonce(5);
        let mut tag = gcm.seal_in_place(&n5, &aad, &mut b).unwrap();
        let both = rate(len, budget, |_| {
            gcm.open_in_place(&n5, &aad, black_box(&mut b), &tag)
                .unwrap();
            tag = gcm.seal_in_place(&n5, &aad, black_box(&mut b)).unwrap();
        });
        let open = 1.0 / (1.0 / both - 1.0 / seal);
        println!("{:10} {seal:>10.0} {open:>10.0}", kernel.name());
        best_seal = best_seal.max(seal);
    }
    // The harness runs and reads `openssl speed` for `bench migrate` too.
    let ossl = harness::gcm_limits::openssl_speed(len, seconds, Direction::Seal);
    match ossl.map(|bytes_s| bytes_s / 1e6) {
        Ok(ossl) => println!(
            "{:10} {ossl:>10.0} {:>10}   (openssl speed -evp aes-256-gcm -bytes {len}); best kernel seals {:.2}x",
            "openssl", "", best_seal / ossl
        ),
        Err(e) => println!("openssl: {}", harness::error_chain(&e)),
    }
}
