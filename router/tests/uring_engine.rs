//! The io_uring ring wrapper against the real kernel, without root: UDP sockets on loopback
//! (GSO sends, GRO receives into a provided-buffer ring), pipes for multishot reads and
//! writes, and cancel-and-drain shutdown with operations in flight.
//!
//! Every test runs its ring on a thread of its own under a watchdog, so a hang fails the test
//! instead of stalling the suite. Run with `--nocapture` to see the per-completion figures.
#![allow(unsafe_code)]

use std::net::UdpSocket;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use weave_router::dataplane::bufsize::Limits;
use weave_router::dataplane::uring::{
    max_gso_segments, BufGroup, Completion, Ring, RingOptions, SetupMode, SizedBufRings,
    StopReason, Target, TxBuf, UringError, RECV_OVERHEAD,
};

const SEGMENT: usize = 1400;
/// A buffer that holds a whole GRO batch (up to 64 KiB) after the recvmsg header fields.
const GRO_BUF: u32 = (RECV_OVERHEAD + 65_536) as u32;
const RECV_GROUP: BufGroup = BufGroup(1);
const READ_GROUP: BufGroup = BufGroup(2);
/// Bounds each wait so that a lost completion shows up as a failed loop, not a hang.
const WAIT: Option<Duration> = Some(Duration::from_millis(500));

#[test]
fn gso_sends_arrive_through_gro_complete_and_in_order_with_recycled_buffers() {
    with_watchdog(60, || {
        let (tx, rx) = udp_pair();
        enable_gro(&rx);
        let dest = rx.local_addr().unwrap();
        let mut ring = Ring::new(256, RingOptions::default()).expect("io_uring ring");
        println!("capabilities: {:?}", ring.capabilities());
        // Few buffers, many rounds: the ring only keeps up if buffers come back.
        let pool = ring.add_buf_ring(RECV_GROUP, 4, GRO_BUF).unwrap();
        let recv = ring
            .recv_multi(Target::Fd(rx.as_raw_fd()), RECV_GROUP)
            .unwrap();
        let per_send = max_gso_segments(SEGMENT as u16, false);
        let rounds = 100u64;
        let mut receiver = SegmentChecker::default();
        let mut histogram = std::collections::BTreeMap::<usize, u64>::new();
        let mut out = Vec::new();

        for round in 0..rounds {
            let first = round * 64;
            for chunk_start in (first..first + 64).step_by(per_send) {
                let chunk_end = (chunk_start + per_send as u64).min(first + 64);
                // One iovec per segment, like sleeve header + payload pieces would be.
                let bufs = (chunk_start..chunk_end)
                    .map(|seq| TxBuf::Owned(segment(seq, SEGMENT)))
                    .collect();
                ring.sendmsg(
                    Target::Fd(tx.as_raw_fd()),
                    Some(dest),
                    bufs,
                    Some(SEGMENT as u16),
                    0,
                )
                .expect("queue sendmsg");
            }
            let mut sent = 0;
            while receiver.next < first + 64 || sent < 64 {
                ring.submit_and_wait(1, WAIT).unwrap();
                out.clear();
                assert!(ring.reap(&mut out) > 0, "no completion within {WAIT:?}");
                for completion in out.drain(..) {
                    match completion {
                        Completion::Received { op, datagram } => {
                            assert_eq!(op, recv);
                            assert_eq!(datagram.source, Some(tx.local_addr().unwrap()));
                            assert!(!datagram.truncated);
                            *histogram.entry(datagram.segment_count()).or_default() += 1;
                            if datagram.segment_count() > 1 {
                                assert_eq!(datagram.segment_size, Some(SEGMENT as u16));
                            }
                            for seg in datagram.segments() {
                                receiver.check(seg);
                            }
                        }
                        Completion::Sent { result, bufs, .. } => {
                            let len: usize = bufs.iter().map(|b| b.as_slice().len()).sum();
                            assert_eq!(result.expect("sendmsg"), len);
                            sent += len / SEGMENT;
                        }
                        other => panic!("unexpected completion {other:?}"),
                    }
                }
            }
        }

        println!("datagrams per receive completion (segments: completions): {histogram:?}");
        assert_eq!(receiver.next, rounds * 64);
        assert!(
            histogram.keys().any(|segments| *segments > 1),
            "no receive completion carried several segments: {histogram:?}"
        );
        assert!(pool.recycled() > u64::from(pool.count()) * 10);
        let stats = ring.stats();
        println!("stats: {stats:?}");
        assert_eq!(stats.malformed + stats.bad_buffers + stats.unknown_cqes, 0);
        ring.shutdown().unwrap();
    });
}

#[test]
fn one_sendmsg_cannot_carry_64_segments_of_1400_bytes() {
    // The IPv4 length field caps a GSO send near 64 KiB: 46 segments of 1400 bytes, so the
    // worker splits a 64-frame burst into two sends (see `max_gso_segments`).
    with_watchdog(20, || {
        let (tx, rx) = udp_pair();
        let mut ring = Ring::new(16, RingOptions::default()).unwrap();
        let payload = (0..64)
            .map(|seq| TxBuf::Owned(segment(seq, SEGMENT)))
            .collect();
        ring.sendmsg(
            Target::Fd(tx.as_raw_fd()),
            Some(rx.local_addr().unwrap()),
            payload,
            Some(SEGMENT as u16),
            0,
        )
        .unwrap();

        let completion = next_completion(&mut ring);

        let Completion::Sent { result, bufs, .. } = completion else {
            panic!("unexpected {completion:?}");
        };
        assert_eq!(result.unwrap_err().raw_os_error(), Some(libc::EMSGSIZE));
        assert_eq!(bufs.len(), 64, "buffers handed back after a failed send");
        assert_eq!(max_gso_segments(SEGMENT as u16, false), 46);
    });
}

#[test]
fn an_empty_buffer_ring_ends_the_receive_with_enobufs_and_it_is_rearmed() {
    with_watchdog(30, || {
        let (tx, rx) = udp_pair();
        enable_gro(&rx);
        set_rcvbuf(&rx, 4 << 20);
        let dest = rx.local_addr().unwrap();
        let mut ring = Ring::new(32, RingOptions::default()).unwrap();
        let pool = ring.add_buf_ring(RECV_GROUP, 2, GRO_BUF).unwrap();
        ring.recv_multi(Target::Fd(rx.as_raw_fd()), RECV_GROUP)
            .unwrap();
        // Four GSO sends of 10 segments: four datagrams for a ring of two buffers.
        for message in 0..4u64 {
            let bufs = (message * 10..message * 10 + 10)
                .map(|seq| TxBuf::Owned(segment(seq, SEGMENT)))
                .collect();
            ring.sendmsg(
                Target::Fd(tx.as_raw_fd()),
                Some(dest),
                bufs,
                Some(SEGMENT as u16),
                0,
            )
            .unwrap();
        }
        let mut held = Vec::new();
        let mut out = Vec::new();
        let mut checker = SegmentChecker::default();

        // Hold every buffer received until the kernel has reported the empty ring.
        for _ in 0..50 {
            if ring.stats().enobufs > 0 && held.len() == 2 {
                break;
            }
            ring.submit_and_wait(1, Some(Duration::from_millis(50)))
                .unwrap();
            ring.reap(&mut out);
            held.extend(out.drain(..).filter_map(|c| match c {
                Completion::Received { datagram, .. } => Some(datagram),
                Completion::Sent { result, .. } => {
                    result.unwrap();
                    None
                }
                other => panic!("unexpected {other:?}"),
            }));
        }
        assert_eq!(held.len(), 2, "both buffers lent");
        assert_eq!(pool.lent(), 2);
        // While every buffer is held the receive stays disarmed instead of failing again.
        for _ in 0..3 {
            ring.submit_and_wait(1, Some(Duration::from_millis(20)))
                .unwrap();
            assert_eq!(ring.reap(&mut out), 0);
        }
        assert_eq!(ring.stats().enobufs, 1, "stats: {:?}", ring.stats());
        assert_eq!(pool.enobufs(), 1);
        for datagram in &held {
            datagram.segments().for_each(|seg| checker.check(seg));
        }
        drop(held);

        // Buffers are back: the re-armed receive delivers the rest, nothing lost or reordered.
        while checker.next < 40 {
            ring.submit_and_wait(1, WAIT).unwrap();
            assert!(ring.reap(&mut out) > 0, "receive not re-armed");
            for completion in out.drain(..) {
                let Completion::Received { datagram, .. } = completion else {
                    panic!("unexpected {completion:?}");
                };
                datagram.segments().for_each(|seg| checker.check(seg));
            }
        }
        println!("after ENOBUFS: {:?}", ring.stats());
        assert!(ring.stats().rearms >= 1);
        assert_eq!(pool.lent(), 0);
    });
}

#[test]
fn a_datagram_longer_than_its_buffer_arrives_truncated_and_flagged() {
    with_watchdog(20, || {
        let (tx, rx) = udp_pair();
        let mut ring = Ring::new(16, RingOptions::default()).unwrap();
        ring.add_buf_ring(BufGroup(3), 2, RECV_OVERHEAD as u32)
            .unwrap();
        ring.add_buf_ring(RECV_GROUP, 2, (RECV_OVERHEAD + 100) as u32)
            .unwrap();
        assert!(matches!(
            ring.recv_multi(Target::Fd(rx.as_raw_fd()), BufGroup(3)),
            Err(UringError::BadBufRing(_))
        ));
        ring.recv_multi(Target::Fd(rx.as_raw_fd()), RECV_GROUP)
            .unwrap();
        let sent = segment(7, 500);
        tx.send_to(&sent, rx.local_addr().unwrap()).unwrap();

        let completion = next_completion(&mut ring);

        let Completion::Received { datagram, .. } = completion else {
            panic!("unexpected {completion:?}");
        };
        assert!(datagram.truncated);
        assert_eq!(&datagram.payload[..], &sent[..100]);
        assert_eq!(ring.stats().truncated, 1);
    });
}

#[test]
fn registered_files_carry_sends_and_receives() {
    with_watchdog(20, || {
        let (tx, rx) = udp_pair();
        let options = RingOptions {
            file_slots: 4,
            ..RingOptions::default()
        };
        let mut ring = Ring::new(16, options).unwrap();
        let tx_slot = ring.register_file(tx.as_raw_fd()).unwrap();
        let rx_slot = ring.register_file(rx.as_raw_fd()).unwrap();
        ring.add_buf_ring(RECV_GROUP, 2, 2048).unwrap();
        ring.recv_multi(Target::Fixed(rx_slot), RECV_GROUP).unwrap();
        ring.sendmsg(
            Target::Fixed(tx_slot),
            Some(rx.local_addr().unwrap()),
            vec![TxBuf::Owned(b"through the file table".to_vec())],
            None,
            0,
        )
        .unwrap();
        let mut got = None;
        let mut sent = false;
        let mut out = Vec::new();
        while got.is_none() || !sent {
            ring.submit_and_wait(1, WAIT).unwrap();
            assert!(ring.reap(&mut out) > 0, "no completion within {WAIT:?}");
            for completion in out.drain(..) {
                match completion {
                    Completion::Received { datagram, .. } => got = Some(datagram.payload.to_vec()),
                    Completion::Sent { result, .. } => sent = result.unwrap() == 22,
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        assert_eq!(got.as_deref(), Some(&b"through the file table"[..]));
        ring.unregister_file(tx_slot).unwrap();
        assert_eq!(
            ring.register_file(tx.as_raw_fd()).unwrap(),
            tx_slot,
            "slot reused"
        );
    });
}

#[test]
fn multishot_reads_a_pipe_into_recycled_buffers_until_end_of_file() {
    with_watchdog(30, || {
        let (read_end, write_end) = pipe();
        let mut ring = Ring::new(32, RingOptions::default()).unwrap();
        let pool = ring.add_buf_ring(READ_GROUP, 4, 4096).unwrap();
        let read = ring
            .read_multi(Target::Fd(read_end.as_raw_fd()), READ_GROUP)
            .unwrap();
        let mut expected = Vec::new();
        let mut got = Vec::new();
        let mut reads = 0;
        let mut out = Vec::new();

        for round in 0..200u32 {
            let chunk: Vec<u8> = (0..1000u32).map(|i| (round * 7 + i) as u8).collect();
            expected.extend_from_slice(&chunk);
            // Alternate write and writev so both paths run.
            if round % 2 == 0 {
                ring.write(Target::Fd(write_end.as_raw_fd()), TxBuf::Owned(chunk))
                    .unwrap();
            } else {
                let (a, b) = chunk.split_at(300);
                let bufs = vec![TxBuf::Owned(a.to_vec()), TxBuf::Owned(b.to_vec())];
                ring.writev(Target::Fd(write_end.as_raw_fd()), bufs)
                    .unwrap();
            }
            let mut written = false;
            while got.len() < expected.len() || !written {
                ring.submit_and_wait(1, WAIT).unwrap();
                assert!(ring.reap(&mut out) > 0, "no completion within {WAIT:?}");
                for completion in out.drain(..) {
                    match completion {
                        Completion::Read { op, buf } => {
                            assert_eq!(op, read);
                            reads += 1;
                            got.extend_from_slice(&buf);
                        }
                        Completion::Written { result, .. } => {
                            assert_eq!(result.unwrap(), 1000);
                            written = true;
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                }
            }
        }
        assert_eq!(got, expected);
        assert!(reads >= 200, "one read per round at least, got {reads}");
        assert!(pool.recycled() >= 200);

        drop(write_end);
        let completion = next_completion(&mut ring);
        let Completion::Stopped { op, reason } = completion else {
            panic!("unexpected {completion:?}");
        };
        assert_eq!(op, read);
        assert!(matches!(reason, StopReason::EndOfFile), "{reason:?}");
        assert_eq!(ring.in_flight(), 0);
    });
}

#[test]
fn a_full_submission_queue_is_submitted_and_no_buffer_is_lost() {
    with_watchdog(30, || {
        let (read_end, write_end) = pipe();
        // Four submission slots for a hundred writes: pushes must submit to make room.
        let mut ring = Ring::new(4, RingOptions::default()).unwrap();
        let mut ids = std::collections::HashSet::new();
        for n in 0..100u8 {
            let id = ring
                .write(Target::Fd(write_end.as_raw_fd()), TxBuf::Owned(vec![n; 10]))
                .unwrap();
            ids.insert(id);
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        while !ids.is_empty() {
            ring.submit_and_wait(1, WAIT).unwrap();
            assert!(ring.reap(&mut out) > 0, "writes lost");
            for completion in out.drain(..) {
                let Completion::Written { op, result, bufs } = completion else {
                    panic!("unexpected {completion:?}");
                };
                assert!(ids.remove(&op));
                bytes += result.unwrap();
                assert_eq!(bufs.len(), 1);
            }
        }
        assert_eq!(bytes, 1000);
        let mut data = vec![0u8; 2000];
        let n = read_fd(read_end.as_raw_fd(), &mut data);
        assert_eq!(n, 1000);
        assert_eq!(ring.in_flight(), 0);
    });
}

#[test]
fn shutdown_cancels_and_drains_operations_in_flight() {
    with_watchdog(30, || {
        let (tx, rx) = udp_pair();
        let (pipe_read, _pipe_write) = pipe();
        let (_full_read, full_write) = pipe();
        fill_pipe(full_write.as_raw_fd());
        let mut ring = Ring::new(32, RingOptions::default()).unwrap();
        ring.add_buf_ring(RECV_GROUP, 4, GRO_BUF).unwrap();
        ring.add_buf_ring(READ_GROUP, 4, 4096).unwrap();
        ring.recv_multi(Target::Fd(rx.as_raw_fd()), RECV_GROUP)
            .unwrap();
        ring.read_multi(Target::Fd(pipe_read.as_raw_fd()), READ_GROUP)
            .unwrap();
        // Keep one received buffer past the ring's end.
        tx.send_to(b"kept past the ring", rx.local_addr().unwrap())
            .unwrap();
        let kept = match next_completion(&mut ring) {
            Completion::Received { datagram, .. } => datagram,
            other => panic!("unexpected {other:?}"),
        };
        // A write into a full pipe parks in the kernel until cancelled.
        ring.write(
            Target::Fd(full_write.as_raw_fd()),
            TxBuf::Owned(vec![1; 4096]),
        )
        .unwrap();
        ring.submit().unwrap();
        assert_eq!(ring.in_flight(), 3);

        let report = ring.shutdown().unwrap();

        println!("shutdown: {report:?}");
        assert_eq!(ring.in_flight(), 0);
        assert!(report.cancel_requests >= 1);
        assert!(report.drained >= 3);
        let rejected = ring
            .sendmsg(
                Target::Fd(tx.as_raw_fd()),
                None,
                vec![TxBuf::Owned(vec![9; 5])],
                None,
                0,
            )
            .unwrap_err();
        assert!(matches!(rejected.error, UringError::ShutDown));
        assert_eq!(rejected.bufs[0].as_slice(), &[9; 5], "buffers handed back");
        drop(ring);
        assert_eq!(&kept.payload[..], b"kept past the ring");
        drop(kept);
    });
}

#[test]
fn dropping_a_ring_with_operations_in_flight_drains_them() {
    with_watchdog(30, || {
        let (_tx, rx) = udp_pair();
        let (pipe_read, _pipe_write) = pipe();
        let (_full_read, full_write) = pipe();
        fill_pipe(full_write.as_raw_fd());
        let mut ring = Ring::new(32, RingOptions::default()).unwrap();
        ring.add_buf_ring(RECV_GROUP, 4, GRO_BUF).unwrap();
        ring.add_buf_ring(READ_GROUP, 4, 4096).unwrap();
        let recv = ring
            .recv_multi(Target::Fd(rx.as_raw_fd()), RECV_GROUP)
            .unwrap();
        ring.read_multi(Target::Fd(pipe_read.as_raw_fd()), READ_GROUP)
            .unwrap();
        ring.write(
            Target::Fd(full_write.as_raw_fd()),
            TxBuf::Owned(vec![1; 4096]),
        )
        .unwrap();
        // Cancel one operation on its own first; its stop is reported.
        ring.submit().unwrap();
        ring.cancel(recv).unwrap();
        let completion = next_completion(&mut ring);
        assert!(
            matches!(
                completion,
                Completion::Stopped { op, reason: StopReason::Cancelled } if op == recv
            ),
            "{completion:?}"
        );
        assert_eq!(ring.in_flight(), 2);

        drop(ring);
    });
}

#[test]
fn a_cancel_that_crosses_the_final_completion_stops_the_operation() {
    with_watchdog(30, || {
        let (read_end, write_end) = pipe();
        let mut ring = Ring::new(16, RingOptions::default()).unwrap();
        let pool = ring.add_buf_ring(READ_GROUP, 1, 4096).unwrap();
        let read = ring
            .read_multi(Target::Fd(read_end.as_raw_fd()), READ_GROUP)
            .unwrap();
        write_fd(write_end.as_raw_fd(), b"first");
        let held = match next_completion(&mut ring) {
            Completion::Read { op, buf } if op == read => buf,
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(ring.stats().enobufs, 0, "the read ended before the test");
        // The only buffer is held: the next chunk ends the read with ENOBUFS. Let the kernel
        // post that final completion, but do not reap it before cancelling.
        write_fd(write_end.as_raw_fd(), b"second");
        ring.submit_and_wait(1, WAIT).unwrap();

        ring.cancel(read).unwrap();

        let mut out = Vec::new();
        for _ in 0..5 {
            ring.submit_and_wait(1, Some(Duration::from_millis(20)))
                .unwrap();
            ring.reap(&mut out);
        }
        assert_eq!(ring.stats().enobufs, 1, "the read ended with ENOBUFS");
        assert!(
            matches!(
                out.as_slice(),
                [Completion::Stopped { op, reason: StopReason::Cancelled }] if *op == read
            ),
            "{out:?}"
        );
        // With the buffer back the cancelled read must not come back to life.
        drop(held);
        ring.submit_and_wait(1, Some(Duration::from_millis(20)))
            .unwrap();
        out.clear();
        assert_eq!(ring.reap(&mut out), 0, "{out:?}");
        assert_eq!(ring.stats().rearms, 0);
        assert_eq!(ring.in_flight(), 0);
        assert_eq!(pool.lent(), 0);
    });
}

#[test]
fn a_growable_ring_circulates_only_its_count_and_follows_resizes() {
    with_watchdog(30, || {
        let (tx, rx) = udp_pair();
        let dest = rx.local_addr().unwrap();
        let mut ring = Ring::new(32, RingOptions::default()).unwrap();
        let pool = ring.add_growable_buf_ring(RECV_GROUP, 2, 8, 2048).unwrap();
        ring.recv_multi(Target::Fd(rx.as_raw_fd()), RECV_GROUP)
            .unwrap();
        let mut checker = SegmentChecker::default();
        assert_eq!((pool.count(), pool.capacity(), pool.in_ring()), (2, 8, 2));

        let small = receive_round(&mut ring, &tx, dest, &mut checker);
        assert_eq!(small, [0, 1].into(), "only the first two circulate");
        assert!(pool.enobufs() > 0, "16 datagrams for 2 buffers");

        assert_eq!(ring.resize_buf_ring(RECV_GROUP, 8).unwrap(), 8);
        let grown = receive_round(&mut ring, &tx, dest, &mut checker);
        assert_eq!(grown, (0..8).collect(), "all eight circulate");

        assert_eq!(ring.resize_buf_ring(RECV_GROUP, 2).unwrap(), 2);
        // The ring still holds the other six: they leave as the kernel hands them back.
        receive_round(&mut ring, &tx, dest, &mut checker);
        let shrunk = receive_round(&mut ring, &tx, dest, &mut checker);
        assert_eq!(shrunk, [0, 1].into());
        assert_eq!((pool.count(), pool.in_ring(), pool.lent()), (2, 2, 0));
        let stats = ring.stats();
        assert_eq!(stats.malformed + stats.bad_buffers + stats.unknown_cqes, 0);
    });
}

#[test]
fn idle_buffers_give_their_memory_back_and_fill_again() {
    with_watchdog(30, || {
        let (tx, rx) = udp_pair();
        enable_gro(&rx);
        set_rcvbuf(&rx, 4 << 20);
        // Every send is cut into 1400-byte datagrams that GRO joins again on receipt.
        setsockopt_int(
            tx.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            SEGMENT as i32,
        );
        let dest = rx.local_addr().unwrap();
        let mut ring = Ring::new(32, RingOptions::default()).unwrap();
        println!("setup: {:?}", ring.capabilities().setup);
        let pool = ring.add_buf_ring(RECV_GROUP, 4, GRO_BUF).unwrap();
        ring.recv_multi(Target::Fd(rx.as_raw_fd()), RECV_GROUP)
            .unwrap();
        let mut checker = SegmentChecker::default();
        assert_eq!(pool.resident_bytes(), 0, "nothing written yet");
        let per_send = max_gso_segments(SEGMENT as u16, false) as u64;

        // Eight full batches through four buffers: each buffer written nearly whole.
        let mut held = None;
        for _ in 0..8 {
            let datagram = gso_round(&mut ring, &tx, dest, per_send, &mut checker);
            held = Some(datagram);
        }
        let held = held.unwrap();
        let busy = pool.resident_bytes();
        println!("resident after traffic: {busy} bytes");
        assert!(busy >= 3 * 60_000, "{busy} bytes resident");
        let held_bytes = held.payload.to_vec();

        let released = ring.release_buffers(RECV_GROUP).unwrap();

        let idle = pool.resident_bytes();
        println!("released {released} buffers; resident when idle: {idle} bytes");
        assert_eq!(
            &held.payload[..],
            &held_bytes[..],
            "a lent buffer is left alone"
        );
        if ring.capabilities().setup == SetupMode::SingleIssuerDeferTaskrun && kernel_at_least(6, 8)
        {
            assert_eq!(released, 3, "the three buffers waiting in the ring");
            assert!(idle <= GRO_BUF as usize + 4096, "{idle} bytes resident");
        }
        drop(held);
        // The kernel writes into released memory as into fresh memory.
        for _ in 0..8 {
            gso_round(&mut ring, &tx, dest, per_send, &mut checker);
        }
        assert!(pool.resident_bytes() > idle);
        let stats = ring.stats();
        assert_eq!(stats.malformed + stats.bad_buffers + stats.truncated, 0);
    });
}

#[test]
fn sized_rings_grow_under_a_burst_and_shrink_when_quiet() {
    with_watchdog(30, || {
        let (read_end, write_end) = pipe();
        let mut ring = Ring::new(32, RingOptions::default()).unwrap();
        let limits = Limits {
            min: 2,
            max: 16,
            quiet: Duration::from_millis(100),
        };
        let mut rings = SizedBufRings::new(limits);
        let pool = rings
            .add(&mut ring, READ_GROUP, 4096, Instant::now())
            .unwrap();
        ring.read_multi(Target::Fd(read_end.as_raw_fd()), READ_GROUP)
            .unwrap();
        assert_eq!((pool.count(), pool.capacity()), (2, 16));
        let mut expected = Vec::new();
        let mut got = Vec::new();
        let mut out = Vec::new();
        let mut most = 0;

        // Bursts of 48 KiB: twelve buffers' worth waiting at every turn.
        for round in 0..20u32 {
            let chunk: Vec<u8> = (0..48 * 1024u32).map(|i| (round * 13 + i) as u8).collect();
            write_fd(write_end.as_raw_fd(), &chunk);
            expected.extend_from_slice(&chunk);
            while got.len() < expected.len() {
                ring.submit_and_wait(1, WAIT).unwrap();
                assert!(ring.reap(&mut out) > 0, "no completion within {WAIT:?}");
                for completion in out.drain(..) {
                    let Completion::Read { buf, .. } = completion else {
                        panic!("unexpected {completion:?}");
                    };
                    got.extend_from_slice(&buf);
                }
                rings.tick(Instant::now(), &mut ring);
                most = most.max(pool.count());
            }
        }
        assert_eq!(got, expected);
        println!(
            "grew to {most} buffers, {} resident; {} ENOBUFS",
            pool.resident_bytes(),
            pool.enobufs()
        );
        assert!(most >= 8, "grew to {most} only");
        let busy = pool.resident_bytes();

        // Quiet: turns go by with nothing to read until the ring has shrunk.
        let deadline = Instant::now() + Duration::from_secs(10);
        while pool.count() > limits.min && Instant::now() < deadline {
            ring.submit_and_wait(1, Some(Duration::from_millis(20)))
                .unwrap();
            assert_eq!(ring.reap(&mut out), 0);
            rings.tick(Instant::now(), &mut ring);
        }

        let idle = pool.resident_bytes();
        println!("shrunk to {} buffers, {idle} bytes resident", pool.count());
        assert_eq!(pool.count(), limits.min);
        assert!(idle < busy, "{idle} bytes resident after {busy}");
        // Still reads, in order, from the small ring.
        write_fd(write_end.as_raw_fd(), b"after the quiet");
        let completion = next_completion(&mut ring);
        let Completion::Read { buf, .. } = completion else {
            panic!("unexpected {completion:?}");
        };
        assert_eq!(&buf[..], b"after the quiet");
    });
}

#[test]
fn measure_datagrams_per_submit_and_per_completion_with_and_without_gso() {
    with_watchdog(120, || {
        for gso in [true, false] {
            let figures = burst(10_000, gso);
            println!(
                "{} : {} datagrams of {SEGMENT} B in {:?}; {:.1} datagrams/enter, \
                 {:.1} datagrams/send SQE, {:.1} datagrams/receive completion, {} enters, \
                 {} send SQEs, {} receive completions",
                if gso { "GSO 46" } else { "no GSO" },
                figures.datagrams,
                figures.elapsed,
                figures.datagrams as f64 / figures.enters as f64,
                figures.datagrams as f64 / figures.send_sqes as f64,
                figures.datagrams as f64 / figures.recv_completions as f64,
                figures.enters,
                figures.send_sqes,
                figures.recv_completions,
            );
        }
    });
}

struct Figures {
    datagrams: u64,
    enters: u64,
    send_sqes: u64,
    recv_completions: u64,
    elapsed: Duration,
}

/// Sends `count` datagrams through one ring in windows that the receive buffer can hold, and
/// receives them through the same ring.
fn burst(count: u64, gso: bool) -> Figures {
    let (tx, rx) = udp_pair();
    enable_gro(&rx);
    set_rcvbuf(&rx, 4 << 20);
    let dest = rx.local_addr().unwrap();
    let mut ring = Ring::new(256, RingOptions::default()).unwrap();
    ring.add_buf_ring(RECV_GROUP, 64, GRO_BUF).unwrap();
    ring.recv_multi(Target::Fd(rx.as_raw_fd()), RECV_GROUP)
        .unwrap();
    let per_send = if gso {
        max_gso_segments(SEGMENT as u16, false) as u64
    } else {
        1
    };
    let window = 2 * max_gso_segments(SEGMENT as u16, false) as u64;
    let mut checker = SegmentChecker::default();
    let mut send_sqes = 0;
    let mut recv_completions = 0;
    let mut out = Vec::new();
    let before = ring.stats();
    let start = Instant::now();

    let mut next_send = 0;
    while checker.next < count {
        let window_end = (next_send + window).min(count);
        while next_send < window_end {
            let end = (next_send + per_send).min(window_end);
            let payload: Vec<u8> = (next_send..end)
                .flat_map(|seq| segment(seq, SEGMENT))
                .collect();
            ring.sendmsg(
                Target::Fd(tx.as_raw_fd()),
                Some(dest),
                vec![TxBuf::Owned(payload)],
                gso.then_some(SEGMENT as u16),
                0,
            )
            .unwrap();
            send_sqes += 1;
            next_send = end;
        }
        while checker.next < window_end {
            ring.submit_and_wait(1, WAIT).unwrap();
            assert!(
                ring.reap(&mut out) > 0,
                "datagrams lost at {}",
                checker.next
            );
            for completion in out.drain(..) {
                match completion {
                    Completion::Received { datagram, .. } => {
                        recv_completions += 1;
                        datagram.segments().for_each(|seg| checker.check(seg));
                    }
                    Completion::Sent { result, .. } => {
                        result.unwrap();
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
    }
    let elapsed = start.elapsed();
    Figures {
        datagrams: count,
        enters: ring.stats().enters - before.enters,
        send_sqes,
        recv_completions,
        elapsed,
    }
}

/// Checks that segments arrive complete and in sequence.
#[derive(Default)]
struct SegmentChecker {
    next: u64,
}

impl SegmentChecker {
    fn check(&mut self, seg: &[u8]) {
        assert_eq!(seg, segment(self.next, SEGMENT), "segment {}", self.next);
        self.next += 1;
    }
}

/// Segment `seq`: its sequence number, then bytes derived from it.
fn segment(seq: u64, len: usize) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..len)
        .map(|i| (seq as u8).wrapping_add(i as u8))
        .collect();
    bytes[..8].copy_from_slice(&seq.to_be_bytes());
    bytes
}

/// Sends 16 single datagrams and receives them; returns the buffer ids they arrived in.
fn receive_round(
    ring: &mut Ring,
    tx: &UdpSocket,
    dest: std::net::SocketAddr,
    checker: &mut SegmentChecker,
) -> std::collections::BTreeSet<u16> {
    let first = checker.next;
    for seq in first..first + 16 {
        tx.send_to(&segment(seq, SEGMENT), dest).unwrap();
    }
    let mut bids = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    while checker.next < first + 16 {
        ring.submit_and_wait(1, WAIT).unwrap();
        assert!(
            ring.reap(&mut out) > 0,
            "datagrams lost at {}",
            checker.next
        );
        for completion in out.drain(..) {
            let Completion::Received { datagram, .. } = completion else {
                panic!("unexpected {completion:?}");
            };
            bids.insert(datagram.payload.bid());
            datagram.segments().for_each(|seg| checker.check(seg));
        }
    }
    bids
}

/// Sends `segments` datagrams in one GSO send and receives them (normally as one GRO batch);
/// returns the last receive, still holding its buffer.
fn gso_round(
    ring: &mut Ring,
    tx: &UdpSocket,
    dest: std::net::SocketAddr,
    segments: u64,
    checker: &mut SegmentChecker,
) -> weave_router::dataplane::uring::Datagram {
    let first = checker.next;
    let payload: Vec<u8> = (first..first + segments)
        .flat_map(|seq| segment(seq, SEGMENT))
        .collect();
    tx.send_to(&payload, dest).unwrap();
    let mut out = Vec::new();
    let mut last = None;
    while checker.next < first + segments {
        ring.submit_and_wait(1, WAIT).unwrap();
        assert!(
            ring.reap(&mut out) > 0,
            "datagrams lost at {}",
            checker.next
        );
        for completion in out.drain(..) {
            let Completion::Received { datagram, .. } = completion else {
                panic!("unexpected {completion:?}");
            };
            datagram.segments().for_each(|seg| checker.check(seg));
            last = Some(datagram);
        }
    }
    last.unwrap()
}

/// Whether the running kernel is at least `major.minor`.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let running = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    running >= (major, minor)
}

fn next_completion(ring: &mut Ring) -> Completion {
    let mut out = Vec::new();
    for _ in 0..20 {
        ring.submit_and_wait(1, WAIT).unwrap();
        ring.reap(&mut out);
        if !out.is_empty() {
            assert_eq!(out.len(), 1, "one completion expected: {out:?}");
            return out.remove(0);
        }
    }
    panic!("no completion");
}

/// Runs `test` on its own thread (rings are per-thread) and fails if it takes longer than
/// `seconds`.
fn with_watchdog(seconds: u64, test: impl FnOnce() + Send + 'static) {
    let (done_tx, done_rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        test();
        done_tx.send(()).unwrap();
    });
    match done_rx.recv_timeout(Duration::from_secs(seconds)) {
        Ok(()) => worker.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // The test panicked: re-raise its panic here.
            if let Err(panic) = worker.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("hung for {seconds} s"),
    }
}

fn udp_pair() -> (UdpSocket, UdpSocket) {
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    (tx, rx)
}

fn enable_gro(socket: &UdpSocket) {
    setsockopt_int(socket.as_raw_fd(), libc::SOL_UDP, libc::UDP_GRO, 1);
}

fn set_rcvbuf(socket: &UdpSocket, bytes: i32) {
    setsockopt_int(socket.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, bytes);
}

fn setsockopt_int(fd: RawFd, level: i32, name: i32, value: i32) {
    // SAFETY: `value` outlives the call and the length matches its type.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            std::ptr::from_ref(&value).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt({level}, {name}): {}",
        std::io::Error::last_os_error()
    );
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: pipe2 succeeded, so both are fresh descriptors that nothing else owns.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Fills a (blocking) pipe to the brim, so that the next write has to wait.
fn fill_pipe(fd: RawFd) {
    // SAFETY: fcntl on a descriptor we own; flag changes only.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) };
    let chunk = [0u8; 4096];
    loop {
        // SAFETY: `chunk` is valid for reads of its length.
        let n = unsafe { libc::write(fd, chunk.as_ptr().cast(), chunk.len()) };
        if n < 0 {
            assert_eq!(
                std::io::Error::last_os_error().raw_os_error(),
                Some(libc::EAGAIN)
            );
            break;
        }
    }
    // SAFETY: as above; back to blocking, which io_uring then waits on by polling.
    unsafe { libc::fcntl(fd, libc::F_SETFL, flags) };
}

fn read_fd(fd: RawFd, buf: &mut [u8]) -> usize {
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    usize::try_from(n).expect("read")
}

fn write_fd(fd: RawFd, data: &[u8]) {
    // SAFETY: `data` is valid for reads of its length.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    assert_eq!(usize::try_from(n).expect("write"), data.len());
}
