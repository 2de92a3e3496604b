"""The audio path, a peer of the image encoder: audio files decoded to 16 kHz mono (``decode``), a frozen Whisper
encoder from a transformers folder, a hub id or a CTranslate2 model converted exactly (``whisper``, ``ct2``), its
cached features (``features``), the settings (``config``) and an adapter file's audio part (``adapter_part``)."""
