//! Host plumbing over netlink: the weave bridge and the multi-queue TAP attached to it.
