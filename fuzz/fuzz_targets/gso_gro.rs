//! GSO split and GRO coalesce: the first 12 bytes are a virtio_net_hdr, the rest a frame as
//! read from the TAP. Whatever splits with complete checksums must carry complete checksums
//! (TCP/UDP segmentation) and, fed through GRO and split again, give back exactly the same
//! frames in order. The same frame split with partial checksums (between weave-routers)
//! must give the same segments except TCP checksum fields holding the pseudo-header sum,
//! and survive trusted coalescing and a second partial split unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weave_router::dataplane::offload::{
    gso_split, make_partial, Checksums, GroBatch, GroTable, Segments,
};
use weave_router::wire::eth::{locate_l4, verify_l4_checksum, TCP_CHECKSUM_OFFSET};
use weave_router::wire::vnet::{GsoType, VirtioNetHdr, VNET_HDR_LEN};

fuzz_target!(|data: &[u8]| {
    let Ok(hdr) = VirtioNetHdr::parse(data) else {
        return;
    };
    let frame = &data[VNET_HDR_LEN..];
    let Some(full) = full_round_trip(&hdr, frame) else {
        return;
    };
    partial_round_trip(&hdr, frame, &full);
});

/// Splits with complete checksums, checks them, and checks GRO then GSO gives the same
/// frames; returns the segments, or `None` when the split refused the frame.
fn full_round_trip(hdr: &VirtioNetHdr, frame: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut segments = Segments::with_headroom(20);
    let Ok(count) = gso_split(hdr, frame, &mut segments, Checksums::Full) else {
        assert!(segments.is_empty(), "a failed split appends nothing");
        return None;
    };
    assert_eq!(count, segments.len());
    let segmented = matches!(
        hdr.gso_type,
        GsoType::TcpV4 | GsoType::TcpV6 | GsoType::UdpL4
    );
    for seg in segments.frames() {
        if segmented {
            assert_eq!(verify_l4_checksum(seg), Ok(true));
            assert!(seg.len() <= frame.len());
        }
    }

    let mut gro = GroTable::new(4);
    let mut out = GroBatch::new();
    for seg in segments.frames() {
        gro.push(seg, &mut out);
    }
    gro.flush(&mut out);

    let mut again = Segments::new();
    for item in out.iter() {
        let out_hdr = VirtioNetHdr::parse(item).expect("GRO output starts with a header");
        gso_split(&out_hdr, &item[VNET_HDR_LEN..], &mut again, Checksums::Full)
            .expect("GRO output splits");
    }
    let before: Vec<Vec<u8>> = segments.frames().map(<[u8]>::to_vec).collect();
    let after: Vec<&[u8]> = again.frames().collect();
    assert_eq!(before, after);
    Some(before)
}

/// Splits with partial checksums: each segment equals its complete-checksum twin but for the
/// TCP checksum field, and trusted GRO then a partial split gives the segments back.
fn partial_round_trip(hdr: &VirtioNetHdr, frame: &[u8], full: &[Vec<u8>]) {
    let mut segments = Segments::new();
    let count = gso_split(hdr, frame, &mut segments, Checksums::Partial)
        .expect("a frame that splits with complete checksums splits with partial ones");
    assert_eq!(count, full.len());
    let partial: Vec<Vec<u8>> = segments.frames().map(<[u8]>::to_vec).collect();
    // An unsegmented TCP frame whose NEEDS_CSUM points anywhere but its TCP checksum (no
    // kernel sends one) has that checksum written with complete checksums; between
    // weave-routers its TCP checksum is the one the receiving kernel completes.
    let odd_offsets = hdr.gso_type == GsoType::None
        && hdr.needs_csum()
        && locate_l4(frame).is_ok_and(|loc| {
            usize::from(hdr.csum_start) != loc.l4_offset
                || usize::from(hdr.csum_offset) != TCP_CHECKSUM_OFFSET
        });
    for (p, f) in partial.iter().zip(full) {
        if p != f && !odd_offsets {
            // Only a TCP checksum field may differ (a pod's wrong checksum on an unsegmented
            // frame is not carried over: the receiving kernel sums the segment afresh).
            let (mut p, mut f) = (p.clone(), f.clone());
            assert!(make_partial(&mut p), "only TCP checksums differ");
            assert!(make_partial(&mut f));
            assert_eq!(p, f);
        }
    }

    let mut gro = GroTable::new(4);
    let mut out = GroBatch::new();
    for seg in &partial {
        gro.push_partial(seg, &mut out);
    }
    gro.flush(&mut out);

    let mut again = Segments::new();
    for item in out.iter() {
        let out_hdr = VirtioNetHdr::parse(item).expect("GRO output starts with a header");
        gso_split(
            &out_hdr,
            &item[VNET_HDR_LEN..],
            &mut again,
            Checksums::Partial,
        )
        .expect("GRO output splits");
    }
    let after: Vec<&[u8]> = again.frames().collect();
    assert_eq!(partial, after);
}
