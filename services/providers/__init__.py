"""One module per upstream API, their shared pieces (``_common``, ``_chat``, ``_images_api``), the
provider seam (``base``) and the catalog that finds them (``catalog``)."""
