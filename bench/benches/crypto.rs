//! Sealing and opening one encrypted sleeve datagram, per size, in both formats: Weave Net's
//! NaCl secretbox (XSalsa20-Poly1305, as towards Weave Net peers) and the AES-256-GCM format
//! two weave-routers agree on. A datagram of 1438 bytes carries a frame of the encrypted
//! path MTU (1414) with its headers. Opening includes the replay-window check; each opened
//! datagram is a fresh one sealed beforehand, outside the timing.
#![allow(missing_docs)] // criterion's macros generate undocumented items

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use weave_router::crypto::SessionKey;
use weave_router::dataplane::sealed::{PathCrypto, OVERHEAD};

const SIZES: [usize; 3] = [64, 512, 1438];

/// `[name][gap][frames]` with `len` bytes of frames.
fn layout(len: usize) -> Vec<u8> {
    let mut buf = vec![0xaa, 0, 0, 0, 0, 1];
    buf.resize(6 + OVERHEAD + len, 0x5a);
    buf
}

fn crypto_bench(c: &mut Criterion) {
    let key = SessionKey::from_bytes([0x42; 32]);
    for (format, aead) in [("nacl", false), ("aes-256-gcm", true)] {
        let mut g = c.benchmark_group(format!("sleeve_crypto/{format}"));
        for len in SIZES {
            g.throughput(Throughput::Bytes(len as u64));
            let sender = PathCrypto::new(key.clone(), true, aead);
            let receiver = PathCrypto::new(key.clone(), false, aead);
            let mut buf = layout(len);
            g.bench_function(format!("seal/{len}"), |b| {
                b.iter(|| black_box(sender.seal(true, 0, black_box(&mut buf))))
            });
            let sealer = PathCrypto::new(key.clone(), true, aead);
            g.bench_function(format!("open/{len}"), |b| {
                b.iter_batched_ref(
                    || {
                        let mut d = layout(len);
                        assert!(sealer.seal(true, 0, &mut d));
                        d
                    },
                    |d| {
                        let (name, body) = d.split_at_mut(6);
                        black_box(receiver.open(name, body).expect("opens"))
                    },
                    BatchSize::SmallInput,
                )
            });
        }
        g.finish();
    }
}

criterion_group!(benches, crypto_bench);
criterion_main!(benches);
