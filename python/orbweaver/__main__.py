from orbweaver.cli import main

raise SystemExit(main())
