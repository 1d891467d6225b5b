from napari_atagan.cli import main

raise SystemExit(main())
