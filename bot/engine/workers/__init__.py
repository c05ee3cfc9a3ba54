"""Render workers on Ray Serve, reached over HTTP.

`protocol` (the wire format) and `http_backend` (the client) import no Ray: the bot and the CLI use them.
`deploy` pushes the application through the Ray dashboard's REST API, also without Ray. `serve_app` is the
only module that imports Ray; it runs on the cluster's nodes.
"""
