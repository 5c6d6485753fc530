from normgrad.cli import main

raise SystemExit(main())
