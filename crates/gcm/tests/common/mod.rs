//! What the integration tests share: the kernels this CPU can run (reported loudly),
//! and a small deterministic PRNG.

use record_gcm::Kernel;

/// The kernels this CPU runs; prints the ones it cannot, and why, to the test output.
pub fn kernels() -> Vec<Kernel> {
    let mut run = Vec::new();
    for k in Kernel::ALL {
        match k.missing() {
            None => run.push(k),
            Some(why) => eprintln!("!!! kernel {k} NOT TESTED on this machine: {why}"),
        }
    }
    eprintln!(
        "kernels tested: {}",
        run.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
    );
    run
}

/// SplitMix64: deterministic, seeded per test so a failure can be replayed.
// Not every test binary that includes this module draws random numbers.
#[allow(dead_code)]
pub struct Rng(pub u64);

#[allow(dead_code)]
impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    pub fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        self.fill(&mut a);
        a
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }
}
