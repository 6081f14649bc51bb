"""Who may talk to a node: HTTP Basic users from an htpasswd file, TLS settings.

`htpasswd` parses Apache password files (bcrypt entries only) and notices when
the file changes; `api/auth.py` turns that into the request middleware. `tls_files`
holds the validated certificate/key/CA paths given on the command line (API and
cluster) and builds SSL contexts from them. `permissions` checks that the data
directory is not open to other users.
"""
