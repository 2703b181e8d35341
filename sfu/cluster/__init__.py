"""Several `sfu serve` nodes sharing rooms through Redis ([cluster] redis_url): the
registry (nodes, heartbeats, room placements) and the cluster view for backends."""
