"""The server-rendered web UI: pages, charts, templates and static assets."""
