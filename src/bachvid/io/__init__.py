"""What bachvid reads and writes: stories (`story`), videos, previews, sheets and manifests
(`outputs`, all written atomically), and saved identities (`identity_file`, `.bvid`)."""
