"""``sfu serve --workers N``: a front process and N worker processes, one room on one
worker (sfu.workers.front has the picture)."""
