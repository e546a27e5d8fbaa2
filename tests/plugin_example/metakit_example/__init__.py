"""An outside package that adds a learner (:mod:`.nearest`) and a toy domain (:mod:`.blobs`) to metakit."""
