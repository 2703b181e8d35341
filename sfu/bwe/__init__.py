"""Per-subscriber bandwidth estimation from transport-wide congestion control feedback,
sans IO: the feedback packet (twcc), the delay-based detector (delay), the estimator."""

from sfu.bwe.estimator import BandwidthEstimator, PacketResult
from sfu.bwe.twcc import TwccFeedback, build_feedback, parse_feedback

__all__ = ["BandwidthEstimator", "PacketResult", "TwccFeedback", "build_feedback",
           "parse_feedback"]
