from postroom.admin.cli import main

raise SystemExit(main())
