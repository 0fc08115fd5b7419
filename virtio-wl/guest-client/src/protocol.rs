//! Hand-written opcodes from wayland.xml (1.21) and stable/xdg-shell.xml (1.31).
//! `req` = requests (client → compositor), `ev` = events.

pub const DISPLAY_ID: u32 = 1;

pub mod wl_display {
    pub mod req {
        pub const SYNC: u16 = 0;
        pub const GET_REGISTRY: u16 = 1;
    }
    pub mod ev {
        pub const ERROR: u16 = 0;
        pub const DELETE_ID: u16 = 1;
    }
}

pub mod wl_registry {
    pub mod req {
        pub const BIND: u16 = 0;
    }
    pub mod ev {
        pub const GLOBAL: u16 = 0;
        pub const GLOBAL_REMOVE: u16 = 1;
    }
}

pub mod wl_callback {
    pub mod ev {
        pub const DONE: u16 = 0;
    }
}

pub mod wl_compositor {
    pub const NAME: &str = "wl_compositor";
    /// v4 brings `wl_surface.damage_buffer`; v5 only forbids non-zero attach offsets.
    pub const VERSION: u32 = 5;
    pub mod req {
        pub const CREATE_SURFACE: u16 = 0;
    }
}

pub mod wl_shm {
    pub const NAME: &str = "wl_shm";
    pub const VERSION: u32 = 1;
    pub const FORMAT_ARGB8888: u32 = 0;
    pub const FORMAT_XRGB8888: u32 = 1;
    pub mod req {
        pub const CREATE_POOL: u16 = 0;
    }
    pub mod ev {
        pub const FORMAT: u16 = 0;
    }
}

pub mod wl_shm_pool {
    pub mod req {
        pub const CREATE_BUFFER: u16 = 0;
        pub const DESTROY: u16 = 1;
    }
}

pub mod wl_buffer {
    pub mod req {
        pub const DESTROY: u16 = 0;
    }
    pub mod ev {
        pub const RELEASE: u16 = 0;
    }
}

pub mod wl_surface {
    pub mod req {
        pub const DESTROY: u16 = 0;
        pub const ATTACH: u16 = 1;
        pub const DAMAGE: u16 = 2;
        pub const FRAME: u16 = 3;
        pub const COMMIT: u16 = 6;
        /// Since version 4.
        pub const DAMAGE_BUFFER: u16 = 9;
    }
}

pub mod wl_seat {
    pub const NAME: &str = "wl_seat";
    pub const VERSION: u32 = 5;
    pub mod ev {
        pub const CAPABILITIES: u16 = 0;
        pub const NAME: u16 = 1;
    }
}

pub mod wl_data_device_manager {
    pub const NAME: &str = "wl_data_device_manager";
    pub const VERSION: u32 = 3;
    pub mod req {
        pub const CREATE_DATA_SOURCE: u16 = 0;
        pub const GET_DATA_DEVICE: u16 = 1;
    }
}

pub mod wl_data_device {
    pub mod req {
        pub const SET_SELECTION: u16 = 1;
    }
    pub mod ev {
        pub const DATA_OFFER: u16 = 0;
        pub const SELECTION: u16 = 5;
    }
}

pub mod wl_data_offer {
    pub mod req {
        pub const RECEIVE: u16 = 1;
        pub const DESTROY: u16 = 2;
    }
    pub mod ev {
        pub const OFFER: u16 = 0;
    }
}

pub mod wl_data_source {
    pub mod req {
        pub const OFFER: u16 = 0;
    }
    pub mod ev {
        pub const TARGET: u16 = 0;
        pub const SEND: u16 = 1;
        pub const CANCELLED: u16 = 2;
    }
}

pub mod xdg_wm_base {
    pub const NAME: &str = "xdg_wm_base";
    pub const VERSION: u32 = 5;
    pub mod req {
        pub const GET_XDG_SURFACE: u16 = 2;
        pub const PONG: u16 = 3;
    }
    pub mod ev {
        pub const PING: u16 = 0;
    }
}

pub mod xdg_surface {
    pub mod req {
        pub const GET_TOPLEVEL: u16 = 1;
        pub const ACK_CONFIGURE: u16 = 4;
    }
    pub mod ev {
        pub const CONFIGURE: u16 = 0;
    }
}

pub mod xdg_toplevel {
    pub mod req {
        pub const SET_TITLE: u16 = 2;
        pub const SET_APP_ID: u16 = 3;
    }
    pub mod ev {
        pub const CONFIGURE: u16 = 0;
        pub const CLOSE: u16 = 1;
    }
}
