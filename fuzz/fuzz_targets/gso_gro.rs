//! GSO split and GRO coalesce: the first 12 bytes are a virtio_net_hdr, the rest a frame as
//! read from the TAP. Whatever splits must carry complete checksums (TCP/UDP segmentation)
//! and, fed through GRO and split again, give back exactly the same frames in order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weave_router::dataplane::offload::{gso_split, GroBatch, GroTable, Segments};
use weave_router::wire::eth::verify_l4_checksum;
use weave_router::wire::vnet::{GsoType, VirtioNetHdr, VNET_HDR_LEN};

fuzz_target!(|data: &[u8]| {
    let Ok(hdr) = VirtioNetHdr::parse(data) else {
        return;
    };
    let frame = &data[VNET_HDR_LEN..];
    let mut segments = Segments::with_headroom(20);
    let Ok(count) = gso_split(&hdr, frame, &mut segments) else {
        assert!(segments.is_empty(), "a failed split appends nothing");
        return;
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
        gso_split(&out_hdr, &item[VNET_HDR_LEN..], &mut again).expect("GRO output splits");
    }
    let before: Vec<&[u8]> = segments.frames().collect();
    let after: Vec<&[u8]> = again.frames().collect();
    assert_eq!(before, after);
});
