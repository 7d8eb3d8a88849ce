//! The `virtio_net_hdr` that a TAP with IFF_VNET_HDR puts before each frame.
