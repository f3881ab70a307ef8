from csi.server import main

main()
